/**
 * Whether a vGPU kernelspec's slice fits the pool now, in words, for the places outside our
 * sidebar that list kernels: JupyterLab's launcher cards and the kernel picker ("Select Kernel").
 * Pure functions; `decorate.ts` puts their text into those views.
 */
import { formatBytes, formatPercent } from './format';
import { IPool, IProfile, Qos } from './model';

const QOS: readonly string[] = ['low', 'medium', 'high', 'critical'] satisfies Qos[];

/** The profile of a kernelspec, from its `metadata.tf_vgpu` (written by tf_jupyter.profiles). */
export function profileFromSpec(spec: {
  name: string;
  display_name?: string;
  metadata?: { [key: string]: unknown } | null;
}): IProfile | null {
  const meta = spec.metadata?.['tf_vgpu'] as Partial<IProfile> | undefined;
  if (!meta || typeof meta !== 'object' || typeof meta.vram !== 'number') {
    return null;
  }
  return {
    name: String(meta.name ?? spec.name.replace(/^vgpu-/, '')),
    vram: meta.vram,
    compute: Number(meta.compute ?? 0),
    count: Number(meta.count ?? 1),
    qos: QOS.includes(String(meta.qos)) ? (meta.qos as Qos) : 'medium',
    whole_device: !!meta.whole_device,
    description: String(meta.description ?? ''),
    kernelspec: spec.name,
    display_name: spec.display_name ?? spec.name
  };
}

/** The slice in words: "4 GiB · 10 %", "2 × 4 GiB · 10 %", "whole device". */
export function sliceText(profile: IProfile): string {
  const count = profile.count > 1 ? `${profile.count} × ` : '';
  if (profile.whole_device) {
    return profile.count > 1 ? `${profile.count} whole devices` : 'whole device';
  }
  return `${count}${formatBytes(profile.vram)} · ${formatPercent(profile.compute)}`;
}

/**
 * Profiles small -> large, as the server sorts `GET profiles` (tf_jupyter.profiles): slices before
 * whole devices, then by VRAM, then by compute, then by count and name.
 */
export function compareProfiles(a: IProfile, b: IProfile): number {
  // By total size, as GET profiles and the launcher order them (launcherOrder.sizeRank).
  return (
    Number(a.whole_device) - Number(b.whole_device) ||
    a.count * a.vram - b.count * b.vram ||
    a.count * a.compute - b.count * b.compute ||
    a.count - b.count ||
    a.name.localeCompare(b.name)
  );
}

/** Whether one up worker has room for the profile's slice(s) now (queue not considered). */
export function fitsNow(profile: IProfile, pool: IPool): boolean {
  return pool.workers.some(w => {
    if (!w.up) {
      return false;
    }
    const free = w.devices.filter(d =>
      profile.whole_device
        ? d.vram_leased === 0 && d.compute_leased === 0
        : d.vram_total - d.vram_leased >= profile.vram && d.compute_capacity - d.compute_leased >= profile.compute
    );
    return free.length >= profile.count;
  });
}

export interface IKernelAvailability {
  /** true: fits now; false: would wait; null: unknown (no pool information yet). */
  fits: boolean | null;
  /** Short text for the card or option: "fits now", "queue: 2 waiting", "no free slice now". */
  text: string;
  /** A full sentence for tooltips and screen readers. */
  description: string;
}

/**
 * Whether a new kernel of `profile` would start now or wait, as the Jupyter side's cache sees it.
 * Like the sidebar (`availability` in model.ts): with anybody in the queue a new kernel is counted
 * as waiting too. `live` false (disconnected or stale) adds "not live" so old figures are not
 * mistaken for current ones.
 */
export function kernelAvailability(profile: IProfile, pool: IPool | null, live = true): IKernelAvailability {
  const slice = sliceText(profile);
  if (!pool) {
    return {
      fits: null,
      text: 'availability unknown',
      description: `vGPU slice ${slice}; whether it fits is not known yet (no pool information).`
    };
  }
  const suffix = live ? '' : ' (not live)';
  const sentenceSuffix = live ? '' : ' These figures are not live: the vGPU events connection is down or stale.';
  const queued = pool.queue_length;
  if (queued === 0 && fitsNow(profile, pool)) {
    return {
      fits: true,
      text: `fits now${suffix}`,
      description: `vGPU slice ${slice}: fits now, a kernel would start at once.${sentenceSuffix}`
    };
  }
  if (queued > 0) {
    return {
      fits: false,
      text: `queue: ${queued} waiting${suffix}`,
      description:
        `vGPU slice ${slice}: would wait in the queue behind ${queued} ` +
        `request${queued === 1 ? '' : 's'}.${sentenceSuffix}`
    };
  }
  return {
    fits: false,
    text: `no free slice now${suffix}`,
    description: `vGPU slice ${slice}: no device has room now, a kernel would wait in the queue (empty now).${sentenceSuffix}`
  };
}

/**
 * The line a launcher card gets under its label: the availability, with the slice in front when
 * the kernelspec's display name does not already say it (custom display names).
 */
export function launcherBadgeText(profile: IProfile, displayName: string, a: IKernelAvailability): string {
  return mentionsSlice(profile, displayName) ? a.text : `${sliceText(profile)} · ${a.text}`;
}

/** The kernel picker's option text: "Python 3 · vGPU 4 GiB · 10 % — fits now". */
export function pickerOptionText(profile: IProfile, displayName: string, a: IKernelAvailability): string {
  const slice = mentionsSlice(profile, displayName) ? '' : ` · ${sliceText(profile)}`;
  return `${displayName}${slice} — ${a.text}`;
}

function mentionsSlice(profile: IProfile, displayName: string): boolean {
  if (profile.whole_device) {
    return /whole/i.test(displayName);
  }
  return displayName.includes(formatBytes(profile.vram));
}
