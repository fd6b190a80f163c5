/**
 * The state of the vGPU pool as this browser sees it, and how messages of the events
 * WebSocket change it (`reduce`). Pure data here; `VgpuModel` adds signals and timers.
 *
 * The API's shapes are generated from `tf_jupyter/openapi.yaml` into `api.d.ts`
 * (`npm run gen:api`; `npm run check:api`, part of `npm run lint`, fails when it drifts).
 */
import { ISignal, Signal } from '@lumino/signaling';

import type { components } from './api';
import { compareProfiles } from './availability';
import { formatBytes, formatBytesPair, formatPercent } from './format';

type Schemas = components['schemas'];

export type Mode = Schemas['Mode'];
export type Qos = Schemas['Qos'];
export type IDevice = Schemas['Device'];
export type IWorker = Schemas['Worker'];
export type IPool = Schemas['Pool'];
export type IKernel = Schemas['Kernel'];
export type IQueueEntry = Schemas['QueueEntry'];
export type IDeviceSample = Schemas['DeviceSample'];
export type ILeaseSample = Schemas['LeaseSample'];
/** A vGPU profile as from `GET profiles`. */
export type IProfile = Schemas['Profile'];
/** One message of the events WebSocket, told apart by `type`. */
export type EventsMessage = Schemas['EventMessage'];

/** One share of a device for the GPU map: one of ours, or (non-admins) all other users' in one. */
export type IDeviceSlice = Schemas['DeviceSlice'];

/** A device with its slices (`slices` absent: an older server). */
export type IMapDevice = IDevice;

/** A queue entry with its notebook and hint. */
export type IWaiting = IQueueEntry;

/** `GET admin`: the whole pool as an admin principal sees it. */
export type IAdminView = Schemas['AdminView'];

/** `GET kernels/{id}/history`. */
export type IKernelHistory = Schemas['KernelHistory'];

/** One point of a kernel's recent history (for its chart). */
export interface IHistoryPoint {
  /** Unix seconds (the worker's sample time, as `GET kernels/{id}/history` gives them). */
  t: number;
  vramUsed: number;
  vramLimit: number;
  utilization: number;
}

export type Connection = 'connecting' | 'connected' | 'disconnected';

export interface IVgpuState {
  pool: IPool | null;
  kernels: { [kernelId: string]: IKernel };
  queue: IQueueEntry[];
  history: { [kernelId: string]: IHistoryPoint[] };
  /** Admin view (`GET admin`), null until loaded or for non-admins. */
  admin: IAdminView | null;
  /** Why the admin view could not be loaded, as a sentence; '' when it could. */
  adminError: string;
  /** Kernels whose VRAM is at or above the warning threshold now. */
  nearLimit: { [kernelId: string]: boolean };
  /** Kernels that waited in the queue and have not been seen started yet. */
  queued: { [kernelId: string]: boolean };
  connection: Connection;
  /** Browser time (ms) of the last message; 0 before the first. */
  lastMessage: number;
  /** Why the connection is down, for the banner. */
  error: string;
}

export type AlertLevel = 'info' | 'success' | 'warning' | 'error';

/** Something worth a notification, produced at most once per event. */
export interface IAlert {
  level: AlertLevel;
  kernelId: string;
  kind: string;
  message: string;
}

/** How far a kernel's chart looks back, in seconds (`GET kernels/{id}/history` keeps as much). */
export const HISTORY_S = 600;

/**
 * `points` (oldest first) with `point` added: at most one point per whole second (a later one in
 * the same second replaces it) and none older than HISTORY_S before it.
 */
export function appendPoint(points: IHistoryPoint[], point: IHistoryPoint): IHistoryPoint[] {
  const second = Math.floor(point.t);
  let end = points.length;
  while (end > 0 && Math.floor(points[end - 1].t) >= second) {
    end -= 1; // the same second as the new point (or later: the clock stepped back): replaced
  }
  const cutoff = point.t - HISTORY_S;
  let start = 0;
  while (start < end && points[start].t < cutoff) {
    start += 1;
  }
  return [...points.slice(start, end), point];
}

/** A loaded history (oldest first) joined with the live points that came after its last one. */
export function mergeHistory(loaded: IHistoryPoint[], live: IHistoryPoint[]): IHistoryPoint[] {
  let out = [...loaded];
  const lastLoaded = loaded.length ? loaded[loaded.length - 1].t : -Infinity;
  for (const p of live) {
    if (p.t > lastLoaded) {
      out = appendPoint(out, p);
    }
  }
  return out;
}

export function emptyState(): IVgpuState {
  return {
    pool: null,
    kernels: {},
    queue: [],
    history: {},
    admin: null,
    adminError: '',
    nearLimit: {},
    queued: {},
    connection: 'connecting',
    lastMessage: 0,
    error: ''
  };
}

/** The near-limit rule: used at or above `threshold` (0-1) of a non-zero limit. */
export function isNearLimit(used: number, limit: number, threshold: number): boolean {
  return limit > 0 && used >= threshold * limit;
}

/** Fraction of the limit in use, 0 when there is no limit. */
export function usedFraction(used: number, limit: number): number {
  return limit > 0 ? used / limit : 0;
}

export interface IReduceOptions {
  /** Warning threshold, 0-1 of the VRAM limit. */
  threshold: number;
  /** Browser time in ms. */
  now: number;
  /** Notebook names by kernel id, for messages. */
  names?: { [kernelId: string]: string };
}

export interface IReduced {
  state: IVgpuState;
  alerts: IAlert[];
  /** The kernel list may have changed: fetch `GET kernels` again. */
  refetchKernels: boolean;
}

const REFETCH_KINDS = new Set([
  'lease_created',
  'lease_released',
  'lease_expired',
  'lease_resized',
  'kernel_started',
  'kernel_exited',
  'idle_release',
  'admin_release'
]);

type Names = { [kernelId: string]: string };

function kernelLabel(state: IVgpuState, kernelId: string, names: Names): string {
  const k = state.kernels[kernelId];
  const name = names[kernelId] || `kernel ${kernelId.slice(0, 8)}`;
  return k && k.profile ? `${name} (${k.profile})` : name;
}

function vramAlert(
  state: IVgpuState,
  names: Names,
  kernelId: string,
  used: number,
  limit: number,
  detail: string
): IAlert {
  const amount = limit
    ? `${formatBytes(used)} of ${formatBytes(limit)} (${formatPercent(Math.round(usedFraction(used, limit) * 100))})`
    : '';
  return {
    level: 'warning',
    kernelId,
    kind: 'near_limit',
    message: `${kernelLabel(state, kernelId, names)}: VRAM near the limit${amount ? ', ' + amount : ''}${detail ? ' — ' + detail : ''}`
  };
}

/** Apply one events message; returns the new state and what to notify. Never mutates `state`. */
export function reduce(state: IVgpuState, msg: EventsMessage, options: IReduceOptions): IReduced {
  const names = options.names || {};
  const alerts: IAlert[] = [];
  let refetchKernels = false;
  let next: IVgpuState = { ...state, lastMessage: options.now, connection: 'connected', error: '' };

  switch (msg.type) {
    case 'hello': {
      const kernels: { [id: string]: IKernel } = {};
      for (const k of msg.kernels) {
        kernels[k.kernel_id] = k;
      }
      next = { ...next, pool: msg.pool, kernels, queue: msg.queue };
      break;
    }
    case 'sample': {
      if (next.pool) {
        const workers = next.pool.workers.map(w => {
          if (w.address !== msg.worker) {
            return w;
          }
          const byUuid = new Map(msg.devices.map(d => [d.uuid, d]));
          return {
            ...w,
            up: true,
            error: '',
            devices: w.devices.map(d => {
              const s = byUuid.get(d.uuid);
              return s
                ? {
                    ...d,
                    vram_used: s.vram_used,
                    vram_total: s.vram_total || d.vram_total,
                    vram_leased: s.vram_leased,
                    compute_leased: s.compute_leased,
                    utilization: s.utilization
                  }
                : d;
            })
          };
        });
        next = { ...next, pool: { ...next.pool, workers } };
      }
      const kernels = { ...next.kernels };
      const history = { ...next.history };
      const nearLimit = { ...next.nearLimit };
      for (const s of msg.leases) {
        if (!s.kernel_id) {
          continue;
        }
        const k = kernels[s.kernel_id];
        if (!k) {
          refetchKernels = true;
          continue;
        }
        kernels[s.kernel_id] = {
          ...k,
          worker_up: true,
          usage: { vram_used: s.vram_used, utilization: s.utilization },
          slice: {
            vram: s.vram_limit,
            compute: s.compute_limit,
            count: k.slice ? k.slice.count : 1
          },
          mode: s.mode
        };
        history[s.kernel_id] = appendPoint(history[s.kernel_id] || [], {
          t: msg.time || options.now / 1000,
          vramUsed: s.vram_used,
          vramLimit: s.vram_limit,
          utilization: s.utilization
        });
        const near = isNearLimit(s.vram_used, s.vram_limit, options.threshold);
        if (near && !nearLimit[s.kernel_id]) {
          alerts.push(vramAlert(next, names, s.kernel_id, s.vram_used, s.vram_limit, ''));
        }
        nearLimit[s.kernel_id] = near;
      }
      next = { ...next, kernels, history, nearLimit };
      break;
    }
    case 'event': {
      if (REFETCH_KINDS.has(msg.kind)) {
        refetchKernels = true;
      }
      const id = msg.kernel_id;
      if (msg.kind === 'limit_warning' && id) {
        // The worker's warning and our own near-limit rule are one episode: notify once.
        if (!next.nearLimit[id]) {
          const k = next.kernels[id];
          alerts.push(vramAlert(next, names, id, k?.usage?.vram_used ?? 0, k?.slice?.vram ?? 0, msg.message));
          next = { ...next, nearLimit: { ...next.nearLimit, [id]: true } };
        }
      } else if (msg.kind === 'watchdog_interrupt' && id) {
        alerts.push({
          level: 'error',
          kernelId: id,
          kind: msg.kind,
          message: `${kernelLabel(next, id, names)} was interrupted by the watchdog: ${msg.message}`
        });
      } else if (msg.kind === 'watchdog_kill' && id) {
        alerts.push({
          level: 'error',
          kernelId: id,
          kind: msg.kind,
          message: `${kernelLabel(next, id, names)} was killed by the watchdog: ${msg.message}`
        });
      } else if (msg.kind === 'kernel_queued' && id) {
        if (!next.queued[id]) {
          alerts.push({ level: 'info', kernelId: id, kind: msg.kind, message: `Kernel queued: ${msg.message}` });
        }
        next = { ...next, queued: { ...next.queued, [id]: true } };
      } else if (msg.kind === 'idle_warning' && id) {
        alerts.push({ level: 'warning', kernelId: id, kind: msg.kind, message: msg.message });
      } else if (msg.kind === 'admin_release' && id) {
        alerts.push({
          level: 'warning',
          kernelId: id,
          kind: msg.kind,
          message: `${kernelLabel(next, id, names)}: ${msg.message}`
        });
      }
      break;
    }
    case 'worker': {
      if (next.pool) {
        const workers = next.pool.workers.map(w =>
          w.address === msg.worker ? { ...w, up: msg.up, error: msg.up ? '' : msg.error || '' } : w
        );
        next = { ...next, pool: { ...next.pool, workers } };
      }
      const kernels: { [id: string]: IKernel } = {};
      for (const [id, k] of Object.entries(next.kernels)) {
        kernels[id] = k.worker === msg.worker ? { ...k, worker_up: msg.up } : k;
      }
      next = { ...next, kernels };
      break;
    }
    case 'queue': {
      next = {
        ...next,
        queue: msg.queue,
        pool: next.pool ? { ...next.pool, queue_length: msg.queue.length } : next.pool
      };
      break;
    }
  }
  return { state: next, alerts, refetchKernels };
}

/**
 * Replace the kernel list with a fresh `GET kernels`, keeping history; a kernel that waited in
 * the queue and is now listed gives a "started" alert.
 */
export function withKernels(state: IVgpuState, list: IKernel[]): IReduced {
  const alerts: IAlert[] = [];
  const kernels: { [id: string]: IKernel } = {};
  const queued = { ...state.queued };
  for (const k of list) {
    kernels[k.kernel_id] = k;
    if (queued[k.kernel_id]) {
      delete queued[k.kernel_id];
      alerts.push({
        level: 'success',
        kernelId: k.kernel_id,
        kind: 'kernel_started',
        message: `Queued kernel started: ${k.profile || 'vGPU'} slice on ${k.worker}`
      });
    }
  }
  const history: { [id: string]: IHistoryPoint[] } = {};
  for (const id of Object.keys(kernels)) {
    if (state.history[id]) {
      history[id] = state.history[id];
    }
  }
  return { state: { ...state, kernels, queued, history }, alerts, refetchKernels: false };
}

/** A kernel's history from `GET kernels/{id}/history`, joined with the live points already seen. */
export function withHistory(state: IVgpuState, history: IKernelHistory): IVgpuState {
  if (!state.kernels[history.kernel_id]) {
    return state; // ended meanwhile
  }
  const loaded = history.samples.map(s => ({
    t: s.t,
    vramUsed: s.vram_used,
    vramLimit: s.vram_limit,
    utilization: s.utilization
  }));
  const points = mergeHistory(loaded, state.history[history.kernel_id] || []);
  return { ...state, history: { ...state.history, [history.kernel_id]: points } };
}

/** A fresh `GET pool`: the counts as the API says them now. */
export function withPool(state: IVgpuState, pool: IPool): IVgpuState {
  return { ...state, pool };
}

/** Whether this server's principal is an admin of a worker up (the pool's `admin`, decided by the server). */
export function isAdmin(pool: IPool | null): boolean {
  if (!pool) {
    return false;
  }
  return pool.admin;
}

/** Leases on the workers, as the API counts them (the pool header's figure). */
export function leaseCount(pool: IPool | null): number {
  return pool ? pool.workers.reduce((n, w) => n + w.leases, 0) : 0;
}

/** Whether the data is older than `staleSeconds` while the socket claims to be connected. */
export function isStale(state: IVgpuState, now: number, staleSeconds: number): boolean {
  if (state.connection !== 'connected' || !state.lastMessage) {
    return false;
  }
  // Samples only flow from workers that are up; with none up, silence is expected.
  const anyUp = !!state.pool && state.pool.workers.some(w => w.up);
  return anyUp && now - state.lastMessage > staleSeconds * 1000;
}

/**
 * The status bar text for a kernel: "vGPU 3.1 / 8.0 GiB · 42 % of the GPU" (utilisation of the
 * whole device, as everywhere), or null without a slice.
 */
export function statusText(kernel: IKernel | undefined): string | null {
  if (!kernel || !kernel.slice) {
    return null;
  }
  const used = kernel.usage ? kernel.usage.vram_used : 0;
  const util = kernel.usage ? Math.round(kernel.usage.utilization) : 0;
  // One unit for both, the limit's (or the use's, when over it): MiB for slices under 1 GiB.
  const of = kernel.device?.kind === 'host' ? 'of the host' : 'of the GPU';
  return `vGPU ${formatBytesPair(used, kernel.slice.vram)} · ${util} % ${of}`;
}

/** Settings of the extension (see schema/plugin.json). */
export interface ISettings {
  refreshSeconds: number;
  staleSeconds: number;
  showPool: boolean;
  showKernels: boolean;
  showQueue: boolean;
  showProfiles: boolean;
  kernelListAvailability: boolean;
  warningThreshold: number;
  notifications: boolean;
}

export const DEFAULT_SETTINGS: ISettings = {
  refreshSeconds: 5,
  staleSeconds: 10,
  showPool: true,
  showKernels: true,
  showQueue: true,
  showProfiles: true,
  kernelListAvailability: true,
  warningThreshold: 0.9,
  notifications: true
};

/**
 * The live model: holds `IVgpuState`, applies messages, says when it changed and what to alert.
 * The connection (`server.ts`) feeds it; components read it.
 */
export class VgpuModel {
  constructor(settings: ISettings = DEFAULT_SETTINGS, now: () => number = Date.now) {
    this._settings = settings;
    this._now = now;
  }

  get state(): IVgpuState {
    return this._state;
  }

  get settings(): ISettings {
    return this._settings;
  }

  set settings(value: ISettings) {
    this._settings = value;
    this._changed.emit();
  }

  /** Session names by kernel id (notebook paths), from the session manager. */
  get names(): { [kernelId: string]: string } {
    return this._names;
  }

  set names(value: { [kernelId: string]: string }) {
    this._names = value;
    this._changed.emit();
  }

  /** The installed profiles (`GET profiles`). */
  get profiles(): IProfile[] {
    return this._profiles;
  }

  set profiles(value: IProfile[]) {
    this._profiles = [...value].sort(compareProfiles);
    this._changed.emit();
  }

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get alerted(): ISignal<this, IAlert> {
    return this._alerted;
  }

  /** Asked to fetch `GET kernels` again (new kernel seen in a sample, lease events). */
  get refetchRequested(): ISignal<this, void> {
    return this._refetch;
  }

  stale(): boolean {
    return isStale(this._state, this._now(), this._settings.staleSeconds);
  }

  /** Whether the figures are live: connected and not stale. */
  live(): boolean {
    return this._state.connection === 'connected' && !this.stale();
  }

  /** A message of the events WebSocket. */
  apply(msg: EventsMessage): void {
    this._take(
      reduce(this._state, msg, { threshold: this._settings.warningThreshold, now: this._now(), names: this._names })
    );
  }

  /** A fresh kernel list from `GET kernels`. */
  setKernels(list: IKernel[]): void {
    this._take(withKernels(this._state, list));
  }

  /** Ask for `GET kernels` (and the pool) soon. */
  requestRefetch(): void {
    this._refetch.emit();
  }

  /** A fresh `GET pool`. */
  setPool(pool: IPool): void {
    this._state = withPool(this._state, pool);
    this._changed.emit();
  }

  /** A kernel's history (`GET kernels/{id}/history`). */
  setHistory(history: IKernelHistory): void {
    this._state = withHistory(this._state, history);
    this._changed.emit();
  }

  /** The admin view (`GET admin`), or why it failed (a sentence). */
  setAdmin(admin: IAdminView | null, error = ''): void {
    this._state = { ...this._state, admin, adminError: error };
    this._changed.emit();
  }

  setConnection(connection: Connection, error = ''): void {
    if (connection === this._state.connection && error === this._state.error) {
      return;
    }
    this._state = { ...this._state, connection, error };
    this._changed.emit();
  }

  /** Re-evaluate time-based things (staleness) and redraw. */
  tick(): void {
    this._changed.emit();
  }

  private _take(result: IReduced): void {
    this._state = result.state;
    this._changed.emit();
    for (const alert of result.alerts) {
      this._alerted.emit(alert);
    }
    if (result.refetchKernels) {
      this._refetch.emit();
    }
  }

  private _state: IVgpuState = emptyState();
  private _settings: ISettings;
  private _names: { [kernelId: string]: string } = {};
  private _profiles: IProfile[] = [];
  private _now: () => number;
  private _changed = new Signal<this, void>(this);
  private _alerted = new Signal<this, IAlert>(this);
  private _refetch = new Signal<this, void>(this);
}
