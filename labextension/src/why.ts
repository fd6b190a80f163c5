/**
 * "Why and how long": quota use per worker as meters, and the words for a waiting start (its
 * reason, notebook and how long it waited). Pure functions for the panel.
 */
import { formatBytes, formatDuration, formatPercent } from './format';
import { IWaiting, IWorker } from './model';

export interface IMeter {
  /** "VRAM", "Compute", "Kernels", "Devices". */
  name: string;
  held: number;
  /** null: no limit. */
  limit: number | null;
  /** held / limit, 0-1 (0 without a limit). */
  fraction: number;
  /** "12 GiB of 16 GiB", "3 of no limit". */
  text: string;
}

const DIMENSIONS = [
  { key: 'vram', name: 'VRAM', unit: formatBytes },
  { key: 'compute', name: 'Compute', unit: formatPercent },
  { key: 'kernels', name: 'Kernels', unit: String },
  { key: 'devices', name: 'Devices', unit: String }
] as const;

/** The quota meters of a worker: every dimension with a limit, and those held without one. */
export function quotaMeters(worker: IWorker): IMeter[] {
  const q = worker.quota;
  if (!q) {
    return [];
  }
  const out: IMeter[] = [];
  for (const d of DIMENSIONS) {
    const { held, limit } = q[d.key];
    if (limit === null && !held) {
      continue;
    }
    out.push({
      name: d.name,
      held,
      limit,
      fraction: limit ? Math.min(1, held / limit) : 0,
      text: limit === null ? `${d.unit(held)} (no limit)` : `${d.unit(held)} of ${d.unit(limit)}`
    });
  }
  return out;
}

/** The reason a start waits, in a few words. */
export function reasonText(reason: string | undefined): string {
  switch (reason) {
    case 'no_room':
      return 'no room on a GPU now';
    case 'quota':
      return 'your quota is used up';
    case 'behind':
      return 'behind an earlier request';
    default:
      return reason ? reason.replace(/_/g, ' ') : 'waiting for room';
  }
}

/** The notebook of a waiting start: the server's, or its labels', or its profile. */
export function waitingNotebook(entry: IWaiting): string {
  return entry.notebook || entry.labels?.notebook || (entry.profile ? `a ${entry.profile} kernel` : 'a kernel');
}

/** "#2 · no room on a GPU now · 3 min" — the entry's one-line summary. */
export function waitingSummary(entry: IWaiting, nowSeconds: number): string {
  return `#${entry.position} · ${reasonText(entry.reason)} · waited ${formatDuration(nowSeconds - entry.since)}`;
}
