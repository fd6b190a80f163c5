// @vitest-environment happy-dom
/** The panel as React renders it: the test ids other tests rely on, the admin section only for admins. */
import * as React from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, it } from 'vitest';

import { VgpuView } from '../components/View';
import { EventsMessage, IKernel, VgpuModel } from '../model';

import { GiB, pool } from './fixtures';

const kernel: IKernel = {
  kernel_id: 'k1',
  worker: '127.0.0.1:5000',
  lease_id: 'lease-1',
  profile: 'small',
  qos: 'medium',
  started: 1000,
  worker_up: true,
  device: { uuid: 'host-0', name: 'host device', kind: 'host' },
  slice: { vram: 4 * GiB, compute: 10, count: 1 },
  usage: { vram_used: GiB, utilization: 3 }
};

function render(admin: boolean): string {
  const model = new VgpuModel();
  const p = { ...pool, admin, workers: pool.workers.map(w => ({ ...w, view: admin ? ('all' as const) : ('own' as const) })) };
  const hello = { type: 'hello', pool: p, kernels: [kernel], queue: [] } as EventsMessage;
  model.apply(hello);
  model.names = { k1: 'train.ipynb' };
  return renderToStaticMarkup(React.createElement(VgpuView, { model }));
}

describe('VgpuView', () => {
  it('has the test ids, the lease count and the kernel card', () => {
    const html = render(false);
    expect(html).toContain('data-testid="tf-vgpu-lease-count" data-count="1">1 lease<');
    expect(html).toMatch(/data-testid="tf-vgpu-kernel" data-kernel-id="k1"/);
    expect(html).toContain('data-testid="tf-vgpu-chart"');
    expect(html).toContain('data-testid="tf-vgpu-device-map" data-device-uuid="host-0"');
    expect(html).toContain('data-testid="tf-vgpu-slice"');
    expect(html).toContain('data-testid="tf-vgpu-quota"');
    expect(html).toContain('train.ipynb');
    expect(html).not.toContain('tf-vgpu-admin');
  });

  it('shows the admin section to admins only', () => {
    expect(render(true)).toContain('data-testid="tf-vgpu-admin"');
  });
});
