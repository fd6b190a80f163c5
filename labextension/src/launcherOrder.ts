/**
 * vGPU kernels from small to large (whole GPUs last) in the launcher and the kernel picker,
 * instead of by display name (where "16 GiB" sorts before "4 GiB").
 *
 * The size comes from the kernelspec's `metadata.tf_vgpu` (vram, compute, count, whole_device).
 * Launcher: @jupyterlab/notebook-extension and console-extension add one item per kernelspec with
 * `metadata.kernel` = the spec's metadata and rank 0 (the default kernel) or Infinity; the
 * Launcher sorts by rank, then by label. `ILauncher.IModel.items()` hands out the items
 * themselves, and `rank` is a plain field of `ILauncher.IItemOptions`, so we give each vGPU item a
 * rank from its size whenever the model changes (non-vGPU items keep theirs).
 * Picker: a native <select> built by `SessionContextDialogs` (@jupyterlab/apputils) in
 * display-name order with no hook; within each <optgroup> we move the vGPU options into size
 * order in the places they already hold (other kernels stay where they are), keeping the choice.
 * Every pass writes only when the order is wrong, so it settles after one pass.
 */
// Types only: this module stays importable without JupyterLab's runtime (unit tests).
import type { ILauncher } from '@jupyterlab/launcher';

const MiB = 1 << 20;
/** Whole-GPU profiles rank after every slice (a slice's rank is its total VRAM in MiB). */
const WHOLE_RANK = 1e12;

/**
 * The launcher rank of a kernelspec's metadata: total VRAM in MiB (plus a compute tiebreak below
 * 1) for slices, after all slices for whole GPUs; null when it is not a vGPU kernelspec.
 */
export function sizeRank(metadata: unknown): number | null {
  if (!metadata || typeof metadata !== 'object') {
    return null;
  }
  const meta = (metadata as { tf_vgpu?: unknown }).tf_vgpu;
  if (!meta || typeof meta !== 'object') {
    return null;
  }
  const { vram, compute, count, whole_device } = meta as Record<string, unknown>;
  const n = typeof count === 'number' && count >= 1 ? count : 1;
  if (whole_device === true) {
    return WHOLE_RANK + n;
  }
  if (typeof vram !== 'number' || typeof compute !== 'number' || vram < 0 || compute < 0) {
    return null;
  }
  return 1 + (n * vram) / MiB + Math.min(n * compute, 999) / 1000;
}

/** Rank the model's vGPU items by size; returns whether any rank changed. */
export function orderLauncher(model: ILauncher.IModel): boolean {
  let changed = false;
  for (const item of model.items()) {
    const kernel = (item.metadata as { kernel?: unknown } | undefined)?.kernel;
    const rank = sizeRank(kernel);
    if (rank !== null && item.rank !== rank) {
      item.rank = rank;
      changed = true;
    }
  }
  return changed;
}

/** The kernelspec name an option of the picker starts, if any (its value is JSON `{name}`). */
function specName(option: HTMLOptionElement): string | null {
  try {
    const name = (JSON.parse(option.value) as { name?: unknown } | null)?.name;
    return typeof name === 'string' ? name : null;
  } catch {
    return null;
  }
}

/**
 * Put the vGPU options of a kernel picker <select> in size order within each group, in the
 * places they hold; the selected value is kept. `rankOf` maps a kernelspec name to its rank
 * (null: not vGPU). Returns the number of groups reordered.
 */
export function orderKernelSelect(select: HTMLSelectElement, rankOf: (kernelspec: string) => number | null): number {
  const groups: Element[] = Array.from(select.querySelectorAll('optgroup'));
  if (groups.length === 0) {
    groups.push(select);
  }
  let reordered = 0;
  const value = select.value;
  for (const group of groups) {
    const options = Array.from(group.children).filter((c): c is HTMLOptionElement => c.tagName === 'OPTION');
    const slots: number[] = [];
    const ranked: { option: HTMLOptionElement; rank: number; index: number }[] = [];
    options.forEach((option, index) => {
      const name = specName(option);
      const rank = name === null ? null : rankOf(name);
      if (rank !== null) {
        slots.push(index);
        ranked.push({ option, rank, index });
      }
    });
    const sorted = [...ranked].sort((a, b) => a.rank - b.rank || a.index - b.index);
    if (sorted.every((r, i) => r === ranked[i])) {
      continue;
    }
    const order = [...options];
    slots.forEach((slot, i) => {
      order[slot] = sorted[i].option;
    });
    for (const option of order) {
      group.appendChild(option);
    }
    reordered += 1;
  }
  if (reordered && select.value !== value) {
    select.value = value;
  }
  return reordered;
}

/** Keeps every kernel picker dialog (attached to `doc.body`) in size order. */
export class KernelSelectOrder {
  constructor(rankOf: (kernelspec: string) => number | null, doc: Document = document) {
    this._rankOf = rankOf;
    const Observer = doc.defaultView?.MutationObserver ?? MutationObserver;
    this._observer = new Observer(records => {
      for (const r of records) {
        for (const node of Array.from(r.addedNodes)) {
          if (node.nodeType === 1) {
            this.orderIn(node as Element);
          }
        }
      }
    });
    this._observer.observe(doc.body, { childList: true });
    this.orderIn(doc.body);
  }

  /** Order the pickers in dialogs under `root`; returns the groups reordered. */
  orderIn(root: Element): number {
    const dialogs = root.matches('.jp-Dialog') ? [root] : Array.from(root.querySelectorAll('.jp-Dialog'));
    let n = 0;
    for (const dialog of dialogs) {
      for (const select of Array.from(dialog.querySelectorAll('select'))) {
        n += orderKernelSelect(select, this._rankOf);
      }
    }
    return n;
  }

  dispose(): void {
    this._observer.disconnect();
  }

  private _rankOf: (kernelspec: string) => number | null;
  private _observer: MutationObserver;
}
