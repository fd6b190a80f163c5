// @vitest-environment happy-dom
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import {
  BADGE_CLASS,
  decorateKernelSelect,
  decorateLauncher,
  IKernelViews,
  KernelListDecorator,
  kernelViews
} from '../decorate';
import { IPool } from '../model';
import { GiB, pool, small, specOf } from './fixtures';

const large = { ...small, name: 'large', kernelspec: 'vgpu-large', vram: 16 * GiB, compute: 50 };
const specs = {
  python3: { name: 'python3', display_name: 'Python 3 (ipykernel)', metadata: {} },
  'vgpu-small': specOf(small),
  'vgpu-large': specOf(large, 'Python 3 · vGPU 16 GiB · 50 %')
};

/** The markup of @jupyterlab/launcher's Card (4.x) for a kernel card. */
function card(label: string, category = 'Notebook'): string {
  return (
    `<div class="jp-LauncherCard" title="${label}" role="button" tabindex="0" data-category="${category}">` +
    `<div class="jp-LauncherCard-icon"><div class="jp-LauncherCard-noKernelIcon">P</div></div>` +
    `<div class="jp-LauncherCard-label" title="${label}"><p>${label}</p></div></div>`
  );
}

function launcherHtml(): string {
  const labels = ['Python 3 (ipykernel)', 'Python 3 · vGPU 4 GiB · 10 %', 'Python 3 · vGPU 16 GiB · 50 %'];
  return (
    '<div class="jp-Launcher"><div class="jp-Launcher-body"><div class="jp-Launcher-content">' +
    `<div class="jp-Launcher-section"><div class="jp-Launcher-cardContainer">${labels.map(l => card(l)).join('')}</div></div>` +
    `<div class="jp-Launcher-section"><div class="jp-Launcher-cardContainer">${labels.map(l => card(l, 'Console')).join('')}</div></div>` +
    `<div class="jp-Launcher-section"><div class="jp-Launcher-cardContainer">${card('Text File', 'Other')}</div></div>` +
    '</div></div></div>'
  );
}

/** The kernel picker's body as SessionContextDialogs builds it. */
function pickerHtml(): string {
  const opt = (text: string, value: unknown) => `<option value='${JSON.stringify(value)}'>${text}</option>`;
  return (
    '<div class="jp-Dialog"><div class="jp-Dialog-content"><div class="jp-Dialog-body"><div>' +
    '<label>Select kernel for: "Untitled.ipynb"</label><select>' +
    '<optgroup label="Start Python Kernel">' +
    opt('Python 3 (ipykernel)', { name: 'python3' }) +
    opt('Python 3 · vGPU 16 GiB · 50 %', { name: 'vgpu-large' }) +
    opt('Python 3 · vGPU 4 GiB · 10 %', { name: 'vgpu-small' }) +
    '</optgroup><optgroup label="Use No Kernel">' +
    opt('No Kernel', null) +
    '</optgroup><optgroup label="Connect to Existing Python Kernel">' +
    opt('Untitled.ipynb (1234abcd)', { id: '1234abcd-0000' }) +
    '</optgroup></select></div></div></div></div>'
  );
}

function badges(root: ParentNode): string[] {
  return Array.from(root.querySelectorAll(`.${BADGE_CLASS}`)).map(b => b.textContent ?? '');
}

function settle(): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, 20));
}

describe('decorateLauncher', () => {
  it("adds a line under each vGPU card, in Notebook and Console, and is idempotent", () => {
    document.body.innerHTML = launcherHtml();
    const views = kernelViews(specs, [], pool, true);
    expect(decorateLauncher(document.body, views)).toBe(4);
    expect(badges(document.body)).toEqual(['fits now', 'no free slice now', 'fits now', 'no free slice now']);
    const smallCard = document.querySelector('.jp-LauncherCard[data-tf-vgpu-kernelspec="vgpu-small"]')!;
    expect(smallCard.getAttribute('data-category')).toBe('Notebook');
    expect(smallCard.getAttribute('aria-description')).toContain('fits now');
    const badge = smallCard.querySelector(`.${BADGE_CLASS}`)!;
    expect(badge.classList.contains('tf-vgpu-fits')).toBe(true);
    expect(badge.getAttribute('title')).toContain('4 GiB · 10 %');
    // The card's own nodes are untouched: the label is still the display name.
    expect(smallCard.querySelector('.jp-LauncherCard-label p')!.textContent).toBe('Python 3 · vGPU 4 GiB · 10 %');
    // A second pass changes nothing.
    const before = document.body.innerHTML;
    decorateLauncher(document.body, views);
    expect(document.body.innerHTML).toBe(before);
  });

  it('follows the pool: queue length, then back to fits; removes the line from non-vGPU cards', () => {
    document.body.innerHTML = launcherHtml();
    decorateLauncher(document.body, kernelViews(specs, [], pool, true));
    const queued: IPool = { ...pool, queue_length: 2 };
    decorateLauncher(document.body, kernelViews(specs, [], queued, true));
    expect(badges(document.body)).toEqual(['queue: 2 waiting', 'queue: 2 waiting', 'queue: 2 waiting', 'queue: 2 waiting']);
    const badge = document.querySelector(`[data-tf-vgpu-kernelspec="vgpu-small"] .${BADGE_CLASS}`)!;
    expect(badge.classList.contains('tf-vgpu-waits')).toBe(true);
    expect(badge.getAttribute('data-fits')).toBe('false');
    decorateLauncher(document.body, kernelViews(specs, [], pool, false));
    expect(badges(document.body)[0]).toBe('fits now (not live)');
    // The kernelspec went away: its cards lose the line.
    const { 'vgpu-large': _gone, ...fewer } = specs;
    void _gone;
    decorateLauncher(document.body, kernelViews(fewer, [], pool, true));
    expect(badges(document.body)).toEqual(['fits now', 'fits now']);
    expect(document.querySelectorAll('[data-tf-vgpu-kernelspec="vgpu-large"]').length).toBe(0);
  });
});

describe('decorateKernelSelect', () => {
  it('rewrites the vGPU options only, keeps values and the selection, and can undo', () => {
    document.body.innerHTML = pickerHtml();
    const select = document.querySelector('select')!;
    select.value = JSON.stringify({ name: 'vgpu-small' });
    const views = kernelViews(specs, [], { ...pool, queue_length: 1 }, true);
    expect(decorateKernelSelect(select, views)).toBe(2);
    const texts = Array.from(select.options).map(o => o.text);
    expect(texts).toEqual([
      'Python 3 (ipykernel)',
      'Python 3 · vGPU 16 GiB · 50 % — queue: 1 waiting',
      'Python 3 · vGPU 4 GiB · 10 % — queue: 1 waiting',
      'No Kernel',
      'Untitled.ipynb (1234abcd)'
    ]);
    expect(JSON.parse(select.value)).toEqual({ name: 'vgpu-small' });
    expect(select.options[2].title).toContain('behind 1 request');
    expect(decorateKernelSelect(select, views)).toBe(2);
    expect(select.options[2].text).toBe('Python 3 · vGPU 4 GiB · 10 % — queue: 1 waiting');
    decorateKernelSelect(select, kernelViews(specs, [], pool, true));
    expect(select.options[2].text).toBe('Python 3 · vGPU 4 GiB · 10 % — fits now');
    decorateKernelSelect(select, kernelViews({ python3: specs.python3 }, [], pool, true));
    expect(select.options[2].text).toBe('Python 3 · vGPU 4 GiB · 10 %');
    expect(select.options[2].hasAttribute('title')).toBe(false);
  });
});

describe('turned off (setting kernelListAvailability false)', () => {
  it('empty views take every decoration away again', () => {
    document.body.innerHTML = launcherHtml() + pickerHtml();
    const views = kernelViews(specs, [], pool, true);
    decorateLauncher(document.body, views);
    const select = document.querySelector('select')!;
    decorateKernelSelect(select, views);
    const none = kernelViews(null, [], null, false);
    expect(none.byKernelspec.size).toBe(0);
    decorateLauncher(document.body, none);
    decorateKernelSelect(select, none);
    expect(badges(document.body)).toEqual([]);
    expect(document.querySelectorAll('[data-tf-vgpu-kernelspec], [aria-description]').length).toBe(0);
    expect(Array.from(select.options).map(o => o.text)).toContain('Python 3 · vGPU 4 GiB · 10 %');
  });
});

describe('KernelListDecorator', () => {
  let views: IKernelViews;
  let decorator: KernelListDecorator;
  beforeEach(() => {
    document.body.innerHTML = '<div id="main"></div>';
    views = kernelViews(specs, [], pool, true);
    decorator = new KernelListDecorator(() => views, document);
  });
  afterEach(() => decorator.dispose());

  it('finds launchers, re-decorates what React re-renders, and follows updates', async () => {
    const main = document.getElementById('main')!;
    main.innerHTML = launcherHtml();
    decorator.decorateNow();
    expect(decorator.launcherCount).toBe(1);
    expect(badges(main)).toHaveLength(4);
    // A re-render replaces the cards: the observer decorates the new ones.
    const container = main.querySelector('.jp-Launcher-cardContainer')!;
    container.innerHTML = card('Python 3 · vGPU 4 GiB · 10 %') + card('Python 3 (ipykernel)');
    await settle();
    expect(badges(container)).toEqual(['fits now']);
    // The pool changes: schedule() updates every card.
    views = kernelViews(specs, [], { ...pool, queue_length: 4 }, true);
    decorator.schedule();
    await settle();
    expect(new Set(badges(main))).toEqual(new Set(['queue: 4 waiting']));
    // A closed launcher is forgotten.
    main.innerHTML = '';
    decorator.decorateNow();
    expect(decorator.launcherCount).toBe(0);
  });

  it('decorates a kernel picker dialog as soon as it is attached, and keeps it live', async () => {
    const host = document.createElement('div');
    host.innerHTML = pickerHtml();
    const dialog = host.firstElementChild!;
    document.body.appendChild(dialog);
    await settle();
    expect(decorator.selectCount).toBe(1);
    const select = dialog.querySelector('select')!;
    expect(select.options[2].text).toBe('Python 3 · vGPU 4 GiB · 10 % — fits now');
    views = kernelViews(specs, [], { ...pool, queue_length: 2 }, true);
    decorator.schedule();
    await settle();
    expect(select.options[2].text).toBe('Python 3 · vGPU 4 GiB · 10 % — queue: 2 waiting');
    dialog.remove();
    decorator.decorateNow();
    expect(decorator.selectCount).toBe(0);
  });
});
