/**
 * The GPU map: one bar per device split into segments — each of our slices named, other users'
 * leased share as one anonymous segment (or, for an admin, one per lease with its principal), and
 * the free space. Pure functions; `components/DeviceMap.tsx` draws them.
 */
import { formatBytes, formatPercent } from './format';
import { IMapDevice } from './model';

export type SegmentKind = 'own' | 'other' | 'free';

export interface ISegment {
  kind: SegmentKind;
  vram: number;
  compute: number;
  /** Share of the device's VRAM, 0-1 (the segment's width). */
  fraction: number;
  /** Short name: the notebook, "other users", a principal, "free". */
  label: string;
  /** The kernel for own segments, else ''. */
  kernelId: string;
  /** A sentence for the hover title. */
  title: string;
}

/** Our name for a kernel's slice: the server's label, the session's notebook, or the id. */
function ownLabel(label: string, kernelId: string, names: { [kernelId: string]: string }): string {
  return label || names[kernelId] || (kernelId ? `kernel ${kernelId.slice(0, 8)}` : 'your lease');
}

/**
 * The segments of a device, own first, then others, then free. A device without `slices` (an
 * older server) shows its whole leased share as one anonymous segment.
 */
export function deviceSegments(device: IMapDevice, names: { [kernelId: string]: string } = {}): ISegment[] {
  const total = device.vram_total;
  const fraction = (vram: number) => (total > 0 ? Math.min(1, Math.max(0, vram / total)) : 0);
  const segments: ISegment[] = [];
  const slices = device.slices ?? [
    { vram: device.vram_leased, compute: device.compute_leased, own: false, kernel_id: '', label: '', principal: '' }
  ];
  for (const s of slices.filter(x => x.own)) {
    const label = ownLabel(s.label, s.kernel_id, names);
    segments.push({
      kind: 'own',
      vram: s.vram,
      compute: s.compute,
      fraction: fraction(s.vram),
      label,
      kernelId: s.kernel_id,
      title: `Yours: ${label} — ${formatBytes(s.vram)} · ${formatPercent(s.compute)}`
    });
  }
  for (const s of slices.filter(x => !x.own && x.vram > 0)) {
    const label = s.principal || 'other users';
    segments.push({
      kind: 'other',
      vram: s.vram,
      compute: s.compute,
      fraction: fraction(s.vram),
      label,
      kernelId: '',
      title: s.principal
        ? `${s.principal}${s.label ? `: ${s.label}` : ''} — ${formatBytes(s.vram)} · ${formatPercent(s.compute)}`
        : `Other users — ${formatBytes(s.vram)} · ${formatPercent(s.compute)} leased`
    });
  }
  const free = Math.max(0, total - device.vram_leased);
  const freeCompute = Math.max(0, device.compute_capacity - device.compute_leased);
  if (free > 0) {
    segments.push({
      kind: 'free',
      vram: free,
      compute: freeCompute,
      fraction: fraction(free),
      label: 'free',
      kernelId: '',
      title: `Free — ${formatBytes(free)} · ${formatPercent(freeCompute)}`
    });
  }
  return segments;
}

/** The map of one device in one sentence, for screen readers. */
export function deviceSummary(device: IMapDevice, segments: ISegment[]): string {
  const name = device.kind === 'host' ? 'host device' : `GPU ${device.index} ${device.name}`.trim();
  const parts = segments.map(s =>
    s.kind === 'own' ? `yours ${s.label} ${formatBytes(s.vram)}` : `${s.label} ${formatBytes(s.vram)}`
  );
  return `${name}, ${formatBytes(device.vram_total)}: ${parts.length ? parts.join('; ') : 'no figures'}`;
}
