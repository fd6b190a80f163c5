// @vitest-environment happy-dom
/** The panel as React renders it: the test ids other tests rely on, the admin section only for admins. */
import * as React from 'react';
import { renderToStaticMarkup } from 'react-dom/server';
import { describe, expect, it } from 'vitest';

import { VgpuView } from '../components/View';
import { EventsMessage, IAdminView, IKernel, VgpuModel } from '../model';

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

function render(admin: boolean, view: IAdminView | null = null): string {
  const model = new VgpuModel();
  const p = { ...pool, admin, workers: pool.workers.map(w => ({ ...w, view: admin ? ('all' as const) : ('own' as const) })) };
  const hello = { type: 'hello', pool: p, kernels: [kernel], queue: [] } as EventsMessage;
  model.apply(hello);
  model.names = { k1: 'train.ipynb' };
  model.setAdmin(view);
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

  it('shows the admin section to admins only: users, idle kernels with a Release button, queue, devices', () => {
    expect(render(true)).toContain('data-testid="tf-vgpu-admin"');
    expect(render(true)).toContain('Loading the admin view');
    const html = render(true, {
      workers: [{ address: 'w1', up: true, error: '', devices: pool.workers[0].devices }],
      users: [{ principal: 'bob', vram: 2 * GiB, compute: 20, kernels: 1, devices: 1 }],
      idle: [
        { worker: 'w1', lease_id: 'L1', principal: 'bob', label: 'x.ipynb', vram: 2 * GiB, compute: 20, idle_s: 3700, qos: 'medium' },
        { worker: 'w1', lease_id: 'L2', principal: 'dan', label: 'y.ipynb', vram: GiB, compute: 10, idle_s: 90, qos: 'low', release_for: 'high' }
      ],
      queue: [
        {
          worker: 'w1',
          id: 'q1',
          principal: 'carol',
          position: 1,
          reason: 'no_room',
          message: 'no room',
          qos: 'medium',
          since: 0,
          profile: 'big',
          request: { vram: 3 * GiB, compute: 10, count: 1, whole_device: false }
        }
      ]
    });
    expect(html).toMatch(/<th scope="row"[^>]*>bob<\/th><td>2 GiB<\/td>/);
    expect(html).toContain('data-testid="tf-vgpu-idle-release"');
    expect(html).toContain('aria-label="Release the slice of x.ipynb of bob"');
    expect(html).toContain('idle 1 h 1 min');
    // the worker's QoS release mark, on dan's lease only
    expect(html.match(/to be released: a waiting high request needs its room/g)).toHaveLength(1);
    expect(html).toContain('#1 carol');
    expect(html).toContain('Queue of all users (1)');
  });
});
