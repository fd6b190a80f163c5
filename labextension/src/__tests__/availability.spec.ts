import { describe, expect, it } from 'vitest';

import {
  fitsNow,
  kernelAvailability,
  launcherBadgeText,
  pickerOptionText,
  profileFromSpec,
  sliceText
} from '../availability';
import { kernelViews } from '../decorate';
import { GiB, MiB, pool, small, specOf } from './fixtures';

describe('profileFromSpec', () => {
  it('reads the profile from metadata.tf_vgpu, and nothing from other kernelspecs', () => {
    expect(profileFromSpec(specOf(small))).toEqual(small);
    expect(profileFromSpec({ name: 'python3', display_name: 'Python 3 (ipykernel)', metadata: {} })).toBeNull();
    expect(profileFromSpec({ name: 'python3', display_name: 'Python 3' })).toBeNull();
    expect(profileFromSpec({ name: 'odd', display_name: 'odd', metadata: { tf_vgpu: 'no' } })).toBeNull();
  });
});

describe('sliceText', () => {
  it('says the slice the way the display names do', () => {
    expect(sliceText(small)).toBe('4 GiB · 10 %');
    expect(sliceText({ ...small, vram: 640 * MiB })).toBe('640 MiB · 10 %');
    expect(sliceText({ ...small, count: 2 })).toBe('2 × 4 GiB · 10 %');
    expect(sliceText({ ...small, whole_device: true })).toBe('whole device');
    expect(sliceText({ ...small, whole_device: true, count: 2 })).toBe('2 whole devices');
  });
});

describe('kernelAvailability', () => {
  it('fits now when an up device has room and nobody waits', () => {
    expect(fitsNow(small, pool)).toBe(true);
    const a = kernelAvailability(small, pool);
    expect(a).toMatchObject({ fits: true, text: 'fits now' });
    expect(a.description).toBe('vGPU slice 4 GiB · 10 %: fits now, a kernel would start at once.');
  });

  it('says how long the queue is when anybody waits, in words', () => {
    const a = kernelAvailability(small, { ...pool, queue_length: 3 });
    expect(a).toMatchObject({ fits: false, text: 'queue: 3 waiting' });
    expect(a.description).toContain('behind 3 requests');
    expect(kernelAvailability(small, { ...pool, queue_length: 1 }).description).toContain('behind 1 request.');
  });

  it('says there is no free slice when it does not fit and the queue is empty', () => {
    for (const p of [{ ...small, vram: 5 * GiB }, { ...small, count: 2 }, { ...small, whole_device: true }]) {
      expect(kernelAvailability(p, pool)).toMatchObject({ fits: false, text: 'no free slice now' });
    }
    const down = { ...pool, workers: pool.workers.map(w => ({ ...w, up: false })) };
    expect(kernelAvailability(small, down).text).toBe('no free slice now');
    expect(kernelAvailability(small, { ...pool, workers: [] }).text).toBe('no free slice now');
  });

  it('is unknown without pool information and marks figures that are not live', () => {
    expect(kernelAvailability(small, null)).toMatchObject({ fits: null, text: 'availability unknown' });
    const stale = kernelAvailability(small, pool, false);
    expect(stale.text).toBe('fits now (not live)');
    expect(stale.description).toContain('not live');
    expect(kernelAvailability(small, { ...pool, queue_length: 2 }, false).text).toBe('queue: 2 waiting (not live)');
  });
});

describe('launcher and picker texts', () => {
  const fits = kernelAvailability(small, pool);
  it('adds the slice only where the display name does not say it', () => {
    expect(launcherBadgeText(small, small.display_name, fits)).toBe('fits now');
    expect(launcherBadgeText(small, 'GPU notebook', fits)).toBe('4 GiB · 10 % · fits now');
    expect(pickerOptionText(small, small.display_name, fits)).toBe('Python 3 · vGPU 4 GiB · 10 % — fits now');
    expect(pickerOptionText(small, 'GPU notebook', fits)).toBe('GPU notebook · 4 GiB · 10 % — fits now');
    const whole = { ...small, whole_device: true };
    expect(launcherBadgeText(whole, 'Python 3 · whole GPU', fits)).toBe('fits now');
  });
});

describe('kernelViews', () => {
  const specs = {
    python3: { name: 'python3', display_name: 'Python 3 (ipykernel)', metadata: {} },
    'vgpu-small': specOf(small),
    'vgpu-large': specOf({ ...small, name: 'large', kernelspec: 'vgpu-large', vram: 16 * GiB, compute: 50 },
      'Python 3 · vGPU 16 GiB · 50 %')
  };

  it('has a view for every vGPU kernelspec, by name and by display name', () => {
    const views = kernelViews(specs, [], pool, true);
    expect([...views.byKernelspec.keys()].sort()).toEqual(['vgpu-large', 'vgpu-small']);
    expect(views.byDisplayName.get('Python 3 · vGPU 4 GiB · 10 %')?.badge).toBe('fits now');
    expect(views.byDisplayName.get('Python 3 · vGPU 16 GiB · 50 %')?.badge).toBe('no free slice now');
    expect(views.byKernelspec.get('vgpu-large')?.optionText).toBe('Python 3 · vGPU 16 GiB · 50 % — no free slice now');
    expect(views.byDisplayName.has('Python 3 (ipykernel)')).toBe(false);
  });

  it("uses the server's profiles where given, with the kernelspec's display name", () => {
    const bigger = { ...small, vram: 6 * GiB };
    const views = kernelViews(specs, [bigger], pool, true);
    expect(views.byKernelspec.get('vgpu-small')?.availability.fits).toBe(false);
    expect(views.byKernelspec.get('vgpu-small')?.displayName).toBe('Python 3 · vGPU 4 GiB · 10 %');
    // A profile whose kernelspec the browser has not loaded yet still has a view.
    const views2 = kernelViews(null, [small], pool, true);
    expect(views2.byKernelspec.get('vgpu-small')?.badge).toBe('fits now');
  });

  it('leaves out display names that two kernelspecs share', () => {
    const twin = { ...specs, other: { name: 'other', display_name: small.display_name, metadata: {} } };
    const views = kernelViews(twin, [], pool, true);
    expect(views.byDisplayName.has(small.display_name)).toBe(false);
    expect(views.byKernelspec.has('vgpu-small')).toBe(true);
  });
});
