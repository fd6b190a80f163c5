/**
 * vGPU availability where JupyterLab lists kernels: the launcher's Notebook and Console cards and
 * the kernel picker ("Select Kernel" dialog, also behind the notebook toolbar's kernel name).
 *
 * Why DOM decoration: JupyterLab 4.6 has no supported way to change how those two views render a
 * kernel. The launcher's kernel cards belong to @jupyterlab/notebook-extension and
 * @jupyterlab/console-extension: their label is `commands.label('notebook:create-new', ...)`, a
 * command we cannot relabel, the card renderer (`Card` in @jupyterlab/launcher) is private, and
 * the Launcher only re-renders on its own model's changes. The picker is a native <select> built
 * by `SessionContextDialogs` (@jupyterlab/apputils) from `display_name`; replacing
 * ISessionContextDialogs would mean disabling a core plugin. The kernelspec's display_name cannot
 * carry live data either: it is copied into every notebook's metadata.
 *
 * So this module adds to their DOM, robustly: it only appends its own element to a launcher card
 * (never touches React's nodes) and only rewrites an <option>'s text and title; every pass is
 * idempotent (writes only what differs), so a MutationObserver that sees our own writes settles
 * after one pass. Observers are scoped: one per launcher node (subtree) and one on <body>'s direct
 * children (where dialogs are attached), not the whole document.
 */
import { IKernelAvailability, kernelAvailability, launcherBadgeText, pickerOptionText, profileFromSpec } from './availability';
import { IPool, IProfile } from './model';

/** A kernelspec as `KernelSpec.ISpecModel` has it (only what we read). */
export interface ISpecLike {
  name: string;
  display_name: string;
  metadata?: { [key: string]: unknown } | null;
}

/** What a vGPU kernelspec shows outside the sidebar. */
export interface IVgpuKernelView {
  kernelspec: string;
  displayName: string;
  availability: IKernelAvailability;
  /** The line under a launcher card's label. */
  badge: string;
  /** The kernel picker's option text. */
  optionText: string;
}

export interface IKernelViews {
  byKernelspec: Map<string, IVgpuKernelView>;
  /** Launcher cards carry only their label; display names shared by two specs are left out. */
  byDisplayName: Map<string, IVgpuKernelView>;
}

/**
 * The views of every vGPU kernelspec: those with `metadata.tf_vgpu` among `specs`, and the
 * server's profiles (`GET profiles`), which win where both know a kernelspec.
 */
export function kernelViews(
  specs: { [name: string]: ISpecLike | undefined } | null | undefined,
  profiles: IProfile[],
  pool: IPool | null,
  live: boolean
): IKernelViews {
  const found = new Map<string, { profile: IProfile; displayName: string }>();
  for (const spec of Object.values(specs ?? {})) {
    const profile = spec ? profileFromSpec(spec) : null;
    if (spec && profile) {
      found.set(spec.name, { profile, displayName: spec.display_name });
    }
  }
  for (const profile of profiles) {
    const spec = specs?.[profile.kernelspec];
    found.set(profile.kernelspec, { profile, displayName: spec?.display_name || profile.display_name });
  }
  const byKernelspec = new Map<string, IVgpuKernelView>();
  const byDisplayName = new Map<string, IVgpuKernelView>();
  const ambiguous = new Set<string>();
  // Display names of all specs, vGPU or not: a label shared with another kernel is ambiguous.
  const labelCount = new Map<string, number>();
  for (const spec of Object.values(specs ?? {})) {
    if (spec) {
      labelCount.set(spec.display_name, (labelCount.get(spec.display_name) ?? 0) + 1);
    }
  }
  for (const [kernelspec, { profile, displayName }] of found) {
    const a = kernelAvailability(profile, pool, live);
    const view: IVgpuKernelView = {
      kernelspec,
      displayName,
      availability: a,
      badge: launcherBadgeText(profile, displayName, a),
      optionText: pickerOptionText(profile, displayName, a)
    };
    byKernelspec.set(kernelspec, view);
    if ((labelCount.get(displayName) ?? 0) > 1 || byDisplayName.has(displayName)) {
      ambiguous.add(displayName);
    }
    byDisplayName.set(displayName, view);
  }
  for (const name of ambiguous) {
    byDisplayName.delete(name);
  }
  return { byKernelspec, byDisplayName };
}

export const BADGE_CLASS = 'tf-vgpu-launcher-badge';

function stateClass(a: IKernelAvailability): string {
  return a.fits === null ? 'tf-vgpu-unknown' : a.fits ? 'tf-vgpu-fits' : 'tf-vgpu-waits';
}

function setAttr(el: Element, name: string, value: string): void {
  if (el.getAttribute(name) !== value) {
    el.setAttribute(name, value);
  }
}

function removeAttr(el: Element, name: string): void {
  if (el.hasAttribute(name)) {
    el.removeAttribute(name);
  }
}

/**
 * Give each vGPU card under `root` a line saying whether its slice fits now or how long the
 * queue is; remove it from cards that are no longer vGPU kernels. Returns the cards decorated.
 */
export function decorateLauncher(root: ParentNode, views: IKernelViews): number {
  let count = 0;
  for (const card of Array.from(root.querySelectorAll<HTMLElement>('.jp-LauncherCard'))) {
    const label = card.querySelector('.jp-LauncherCard-label p')?.textContent?.trim() ?? '';
    const view = views.byDisplayName.get(label);
    let badge = Array.from(card.children).find(c => c.classList.contains(BADGE_CLASS)) as HTMLElement | undefined;
    if (!view) {
      if (badge) {
        badge.remove();
        removeAttr(card, 'data-tf-vgpu-kernelspec');
        removeAttr(card, 'aria-description');
      }
      continue;
    }
    if (!badge) {
      badge = card.ownerDocument.createElement('div');
      badge.className = BADGE_CLASS;
      card.appendChild(badge);
    }
    if (badge.textContent !== view.badge) {
      badge.textContent = view.badge;
    }
    const cls = `${BADGE_CLASS} ${stateClass(view.availability)}`;
    if (badge.className !== cls) {
      badge.className = cls;
    }
    setAttr(badge, 'title', view.availability.description);
    setAttr(badge, 'data-fits', String(view.availability.fits));
    setAttr(card, 'data-tf-vgpu-kernelspec', view.kernelspec);
    // The card is role=button named by its content (label + this line); the sentence describes it.
    setAttr(card, 'aria-description', view.availability.description);
    count += 1;
  }
  return count;
}

/**
 * Rewrite the vGPU options of a kernel picker <select> ("Python 3 · vGPU 4 GiB · 10 % — fits
 * now"); values stay as they are, so the dialog's choice is unchanged. Returns the options changed.
 */
export function decorateKernelSelect(select: HTMLSelectElement, views: IKernelViews): number {
  let count = 0;
  for (const option of Array.from(select.querySelectorAll('option'))) {
    let name: unknown;
    try {
      name = (JSON.parse(option.value) as { name?: unknown } | null)?.name;
    } catch {
      continue;
    }
    const view = typeof name === 'string' ? views.byKernelspec.get(name) : undefined;
    const base = option.getAttribute('data-tf-vgpu-base');
    if (!view) {
      if (base !== null) {
        option.text = base;
        option.removeAttribute('data-tf-vgpu-base');
        removeAttr(option, 'title');
      }
      continue;
    }
    if (base === null) {
      option.setAttribute('data-tf-vgpu-base', option.text);
    }
    if (option.text !== view.optionText) {
      option.text = view.optionText;
    }
    setAttr(option, 'title', view.availability.description);
    setAttr(option, 'data-fits', String(view.availability.fits));
    count += 1;
  }
  return count;
}

/**
 * Keeps launcher cards and open kernel pickers decorated: call `schedule()` whenever the pool,
 * the profiles or the kernelspecs change; it finds launchers in `doc`, observes each for
 * re-renders, and watches `<body>`'s children for kernel picker dialogs.
 */
export class KernelListDecorator {
  constructor(views: () => IKernelViews, doc: Document = document) {
    this._views = views;
    this._doc = doc;
    const Observer = doc.defaultView?.MutationObserver ?? MutationObserver;
    this._Observer = Observer;
    this._dialogs = new Observer(records => {
      for (const r of records) {
        for (const node of Array.from(r.addedNodes)) {
          if (node.nodeType === 1) {
            this._findSelects(node as Element);
          }
        }
      }
      this._decorateSelects();
    });
    this._dialogs.observe(doc.body, { childList: true });
  }

  /** Launchers currently observed (for tests and diagnostics). */
  get launcherCount(): number {
    return this._launchers.size;
  }

  /** Kernel picker <select>s currently decorated. */
  get selectCount(): number {
    return this._selects.size;
  }

  /** Decorate soon (coalesces bursts of pool updates into one pass). */
  schedule(): void {
    if (this._pending || this._disposed) {
      return;
    }
    this._pending = true;
    setTimeout(() => {
      this._pending = false;
      this.decorateNow();
    }, 0);
  }

  /** One pass now: find launchers, drop detached ones, decorate cards and pickers. */
  decorateNow(): void {
    if (this._disposed) {
      return;
    }
    for (const node of Array.from(this._doc.querySelectorAll<HTMLElement>('.jp-Launcher'))) {
      this._watchLauncher(node);
    }
    for (const [node, observer] of this._launchers) {
      if (!node.isConnected) {
        observer.disconnect();
        this._launchers.delete(node);
      }
    }
    const views = this._views();
    for (const node of this._launchers.keys()) {
      decorateLauncher(node, views);
    }
    this._findSelects(this._doc.body);
    this._decorateSelects(views);
  }

  dispose(): void {
    this._disposed = true;
    this._dialogs.disconnect();
    for (const observer of this._launchers.values()) {
      observer.disconnect();
    }
    this._launchers.clear();
    this._selects.clear();
  }

  private _watchLauncher(node: HTMLElement): void {
    if (this._launchers.has(node)) {
      return;
    }
    // React re-renders the launcher (new kernelspecs, cwd changes): decorate what it drew.
    const observer = new this._Observer(() => decorateLauncher(node, this._views()));
    observer.observe(node, { childList: true, subtree: true });
    this._launchers.set(node, observer);
  }

  private _findSelects(root: Element): void {
    const dialogs = root.matches('.jp-Dialog') ? [root] : Array.from(root.querySelectorAll('.jp-Dialog'));
    for (const dialog of dialogs) {
      for (const select of Array.from(dialog.querySelectorAll('select'))) {
        this._selects.add(select);
      }
    }
  }

  private _decorateSelects(views?: IKernelViews): void {
    if (this._selects.size === 0) {
      return;
    }
    const v = views ?? this._views();
    for (const select of Array.from(this._selects)) {
      if (!select.isConnected) {
        this._selects.delete(select);
        continue;
      }
      decorateKernelSelect(select, v);
    }
  }

  private _views: () => IKernelViews;
  private _doc: Document;
  private _Observer: typeof MutationObserver;
  private _dialogs: MutationObserver;
  private _launchers = new Map<HTMLElement, MutationObserver>();
  private _selects = new Set<HTMLSelectElement>();
  private _pending = false;
  private _disposed = false;
}
