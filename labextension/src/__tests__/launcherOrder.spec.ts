// @vitest-environment happy-dom
import type { ILauncher } from '@jupyterlab/launcher';
import { describe, expect, it } from 'vitest';

import { KernelSelectOrder, orderKernelSelect, orderLauncher, sizeRank } from '../launcherOrder';

const GiB = 2 ** 30;
const meta = (vram: number, compute: number, extra: Record<string, unknown> = {}) => ({
  tf_vgpu: { name: 'x', vram, compute, count: 1, qos: 'medium', whole_device: false, ...extra }
});
const SPECS: Record<string, { metadata: unknown; display_name: string }> = {
  python3: { metadata: {}, display_name: 'Python 3 (ipykernel)' },
  'vgpu-large': { metadata: meta(16 * GiB, 50), display_name: 'Python 3 · vGPU 16 GiB · 50 %' },
  'vgpu-medium': { metadata: meta(8 * GiB, 25), display_name: 'Python 3 · vGPU 8 GiB · 25 %' },
  'vgpu-small': { metadata: meta(4 * GiB, 10), display_name: 'Python 3 · vGPU 4 GiB · 10 %' },
  'vgpu-whole': { metadata: meta(0, 100, { whole_device: true }), display_name: 'Python 3 · whole GPU' }
};
const rankOf = (name: string) => sizeRank(SPECS[name]?.metadata);

describe('sizeRank', () => {
  it('orders slices by total VRAM, then compute, whole GPUs last; not vGPU is null', () => {
    const names = ['vgpu-whole', 'vgpu-large', 'python3', 'vgpu-small', 'vgpu-medium'].filter(n => rankOf(n) !== null);
    names.sort((a, b) => rankOf(a)! - rankOf(b)!);
    expect(names).toEqual(['vgpu-small', 'vgpu-medium', 'vgpu-large', 'vgpu-whole']);
    expect(sizeRank(meta(8 * GiB, 25, { count: 2 })) ?? 0).toBeGreaterThan(sizeRank(meta(8 * GiB, 50)) ?? 0);
    expect(sizeRank(meta(4 * GiB, 20))! > sizeRank(meta(4 * GiB, 10))!).toBe(true);
    expect(sizeRank(meta(0, 100, { whole_device: true, count: 2 }))!).toBeGreaterThan(rankOf('vgpu-whole')!);
    expect(sizeRank({})).toBeNull();
    expect(sizeRank(null)).toBeNull();
    expect(sizeRank({ tf_vgpu: { vram: 'big' } })).toBeNull();
  });
});

describe('orderLauncher', () => {
  it('ranks the vGPU items of a launcher model and leaves the others alone', () => {
    // What LauncherModel (@jupyterlab/launcher 4.x) keeps: the items, handed out by items().
    const list: ILauncher.IItemOptions[] = [];
    const model = { items: () => list[Symbol.iterator]() } as unknown as ILauncher.IModel;
    for (const name of Object.keys(SPECS)) {
      list.push({
        command: 'notebook:create-new',
        args: { kernelName: name },
        category: 'Notebook',
        rank: name === 'python3' ? 0 : Infinity,
        metadata: { kernel: SPECS[name].metadata as never }
      });
    }
    expect(orderLauncher(model)).toBe(true);
    expect(orderLauncher(model)).toBe(false); // settles
    const items = Array.from(model.items()).sort((a, b) => (a.rank ?? Infinity) - (b.rank ?? Infinity));
    expect(items.map(i => i.args?.kernelName)).toEqual(['python3', 'vgpu-small', 'vgpu-medium', 'vgpu-large', 'vgpu-whole']);
    expect(items[0].rank).toBe(0);
  });
});

function picker(names: string[], selected: string): HTMLSelectElement {
  const select = document.createElement('select');
  const group = document.createElement('optgroup');
  group.label = 'Start Python Kernel';
  for (const name of names) {
    const option = document.createElement('option');
    option.text = SPECS[name].display_name;
    option.value = JSON.stringify({ name });
    option.selected = name === selected;
    group.appendChild(option);
  }
  const none = document.createElement('optgroup');
  none.label = 'Use No Kernel';
  const noKernel = document.createElement('option');
  noKernel.text = 'No Kernel';
  noKernel.value = 'null';
  none.appendChild(noKernel);
  select.append(group, none);
  return select;
}

const BY_NAME = ['python3', 'vgpu-large', 'vgpu-medium', 'vgpu-small', 'vgpu-whole'].sort((a, b) =>
  SPECS[a].display_name.localeCompare(SPECS[b].display_name)
);
const texts = (select: HTMLSelectElement) => Array.from(select.options).map(o => JSON.parse(o.value)?.name ?? null);

describe('orderKernelSelect', () => {
  it('puts vGPU options in size order in their places, keeps others and the choice', () => {
    const select = picker(BY_NAME, 'vgpu-medium');
    expect(texts(select)[BY_NAME.indexOf('python3')]).toBe('python3');
    expect(orderKernelSelect(select, rankOf)).toBe(1);
    const order = texts(select);
    expect(order.filter(n => n && n !== 'python3')).toEqual(['vgpu-small', 'vgpu-medium', 'vgpu-large', 'vgpu-whole']);
    expect(order.indexOf('python3')).toBe(BY_NAME.indexOf('python3'));
    expect(order[order.length - 1]).toBeNull();
    expect(JSON.parse(select.value)).toEqual({ name: 'vgpu-medium' });
    expect(orderKernelSelect(select, rankOf)).toBe(0); // settles
  });

  it('orders a picker dialog as it is attached', async () => {
    const order = new KernelSelectOrder(rankOf, document);
    const dialog = document.createElement('div');
    dialog.className = 'jp-Dialog';
    dialog.appendChild(picker(BY_NAME, 'python3'));
    document.body.appendChild(dialog);
    await new Promise(resolve => setTimeout(resolve, 0));
    const select = dialog.querySelector('select')!;
    expect(texts(select).filter(n => n && n !== 'python3')).toEqual(['vgpu-small', 'vgpu-medium', 'vgpu-large', 'vgpu-whole']);
    expect(JSON.parse(select.value)).toEqual({ name: 'python3' });
    order.dispose();
    dialog.remove();
  });
});
