import { describe, expect, it } from 'vitest';

import { formatBytesPair, formatDuration } from '../format';
import {
  emptyState,
  EventsMessage,
  IKernel,
  IQueueEntry,
  isNearLimit,
  isStale,
  IVgpuState,
  reduce,
  statusText,
  VgpuModel,
  appendPoint,
  HISTORY_S,
  isAdmin,
  leaseCount,
  withHistory,
  withKernels,
  withPool
} from '../model';

import { GiB, MiB, pool } from './fixtures';

const kernel: IKernel = {
  kernel_id: 'k1',
  worker: '127.0.0.1:5000',
  lease_id: 'lease-1',
  profile: 'small',
  qos: 'medium',
  started: 1000,
  worker_up: true,
  device: { uuid: 'host-0', name: 'host device', kind: 'host' },
  slice: { vram: 8 * GiB, compute: 10, count: 1 },
  mode: 'host',
  usage: { vram_used: 0, utilization: 0 }
};

const hello: EventsMessage = { type: 'hello', pool, kernels: [kernel], queue: [] };

function sample(vramUsed: number, utilization = 42, kernelId = 'k1', time = 1): EventsMessage {
  return {
    type: 'sample',
    time,
    worker: '127.0.0.1:5000',
    devices: [
      {
        uuid: 'host-0',
        vram_used: 2 * GiB,
        vram_total: 8 * GiB,
        vram_leased: 4 * GiB,
        compute_leased: 10,
        utilization: 50
      }
    ],
    leases: [
      {
        lease_id: 'lease-1',
        kernel_id: kernelId,
        device_uuid: 'host-0',
        vram_used: vramUsed,
        vram_limit: 8 * GiB,
        utilization,
        compute_limit: 10,
        mode: 'host'
      }
    ]
  };
}

const opts = (now: number) => ({ threshold: 0.9, now });

function run(messages: EventsMessage[], start: IVgpuState = emptyState()) {
  let state = start;
  const alerts = [];
  let refetch = false;
  let now = 1_000_000;
  for (const m of messages) {
    now += 1000;
    const r = reduce(state, m, opts(now));
    state = r.state;
    alerts.push(...r.alerts);
    refetch = refetch || r.refetchKernels;
  }
  return { state, alerts, refetch, now };
}

describe('formatting', () => {
  // Sizes and percentages: format.spec.ts, against the table shared with the Python side.
  it('prints a used/limit pair in one unit', () => {
    expect(formatBytesPair(3.1 * GiB, 8 * GiB)).toBe('3.1 / 8.0 GiB');
    expect(formatBytesPair(200 * MiB, 640 * MiB)).toBe('200.0 / 640.0 MiB');
  });

  it('prints durations', () => {
    expect(formatDuration(12)).toBe('12 s');
    expect(formatDuration(180)).toBe('3 min');
    expect(formatDuration(7500)).toBe('2 h 5 min');
  });

  it('writes the status bar text', () => {
    expect(statusText({ ...kernel, usage: { vram_used: 3.1 * GiB, utilization: 42.4 } })).toBe(
      'vGPU 3.1 / 8.0 GiB · 42 % of the host'
    );
    const gpu = { uuid: 'GPU-1', name: 'A100', kind: 'gpu' as const };
    expect(statusText({ ...kernel, device: gpu, usage: { vram_used: GiB, utilization: 12 } })).toBe(
      'vGPU 1.0 / 8.0 GiB · 12 % of the GPU'
    );
    expect(
      statusText({ ...kernel, slice: { vram: 640 * MiB, compute: 10, count: 1 }, usage: { vram_used: 621 * MiB, utilization: 0 } })
    ).toBe('vGPU 621.0 / 640.0 MiB · 0 % of the host');
    expect(statusText({ ...kernel, slice: undefined })).toBeNull();
    expect(statusText(undefined)).toBeNull();
  });
});

describe('near-limit rule', () => {
  it('is at or above the threshold of a non-zero limit', () => {
    expect(isNearLimit(89, 100, 0.9)).toBe(false);
    expect(isNearLimit(90, 100, 0.9)).toBe(true);
    expect(isNearLimit(120, 100, 0.9)).toBe(true);
    expect(isNearLimit(5, 0, 0.9)).toBe(false);
  });
});

describe('reduce', () => {
  it('takes the pool, kernels and queue from hello', () => {
    const { state } = run([hello]);
    expect(state.connection).toBe('connected');
    expect(state.pool?.workers[0].devices[0].kind).toBe('host');
    expect(Object.keys(state.kernels)).toEqual(['k1']);
  });

  it('updates devices and kernel usage from samples and keeps 10 minutes of history, one point a second', () => {
    const messages: EventsMessage[] = [hello];
    // Two samples a second (worker time) for 700 s.
    for (let i = 0; i < 1400; i++) {
      messages.push(sample(i * MiB, 42, 'k1', 5000 + i / 2));
    }
    const { state } = run(messages);
    expect(state.pool?.workers[0].devices[0].vram_used).toBe(2 * GiB);
    expect(state.pool?.workers[0].devices[0].utilization).toBe(50);
    expect(state.kernels.k1.usage).toEqual({ vram_used: 1399 * MiB, utilization: 42 });
    const history = state.history.k1;
    const last = 5000 + 1399 / 2;
    expect(history[history.length - 1]).toEqual({ t: last, vramUsed: 1399 * MiB, vramLimit: 8 * GiB, utilization: 42 });
    expect(history[0].t).toBeGreaterThanOrEqual(last - HISTORY_S);
    expect(history.length).toBe(HISTORY_S + 1);
    const seconds = history.map(p => Math.floor(p.t));
    expect(new Set(seconds).size).toBe(seconds.length);
  });

  it('appends at most one point per second, replacing one of the same second or a later one', () => {
    const p = (t: number, v = t) => ({ t, vramUsed: v, vramLimit: 10, utilization: 0 });
    let points = appendPoint([], p(100));
    points = appendPoint(points, p(100.6));
    expect(points).toEqual([p(100.6)]);
    points = appendPoint(points, p(101.2));
    expect(points.map(x => x.t)).toEqual([100.6, 101.2]);
    points = appendPoint(points, p(100.9)); // the clock stepped back: the later points go
    expect(points.map(x => x.t)).toEqual([100.9]);
    points = appendPoint(points, p(100.9 + HISTORY_S + 1));
    expect(points.map(x => x.t)).toEqual([100.9 + HISTORY_S + 1]);
  });

  it('joins a loaded history with the live points that came after it, for known kernels only', () => {
    const live = run([hello, sample(5 * MiB, 7, 'k1', 2000), sample(6 * MiB, 8, 'k1', 2001)]).state;
    const loaded = withHistory(live, {
      kernel_id: 'k1',
      window_s: 600,
      samples: [
        { t: 1990, vram_used: MiB, vram_limit: 8 * GiB, utilization: 1 },
        { t: 2000, vram_used: 2 * MiB, vram_limit: 8 * GiB, utilization: 2 }
      ]
    });
    expect(loaded.history.k1.map(x => [x.t, x.vramUsed])).toEqual([
      [1990, MiB],
      [2000, 2 * MiB],
      [2001, 6 * MiB]
    ]);
    const unknown = withHistory(live, { kernel_id: 'gone', window_s: 600, samples: [] });
    expect(unknown).toBe(live);
  });

  it('takes the pool from GET pool, counts its leases and tells admins apart', () => {
    const state = withPool(emptyState(), pool);
    expect(leaseCount(state.pool)).toBe(1);
    expect(leaseCount(null)).toBe(0);
    expect(isAdmin(state.pool)).toBe(false);
    const all = { ...pool, admin: true, workers: pool.workers.map(w => ({ ...w, view: 'all' as const })) };
    expect(isAdmin(all)).toBe(true);
    expect(isAdmin({ ...all, admin: false } as typeof all)).toBe(false);
  });

  it('drops a kernel and its history when GET kernels no longer lists it', () => {
    const { state } = run([hello, sample(MiB, 1, 'k1', 10)]);
    expect(state.history.k1.length).toBe(1);
    const after = withKernels(state, []).state;
    expect(after.kernels).toEqual({});
    expect(after.history).toEqual({});
  });

  it('asks for the kernel list when a sample names an unknown kernel', () => {
    const { refetch, state } = run([hello, sample(MiB, 1, 'k-new')]);
    expect(refetch).toBe(true);
    expect(state.kernels['k-new']).toBeUndefined();
  });

  it('notifies near the limit once per episode, the worker warning included', () => {
    const { alerts } = run([
      hello,
      sample(GiB),
      sample(7.5 * GiB),
      sample(7.6 * GiB),
      {
        type: 'event',
        kind: 'limit_warning',
        message: 'over 90 %',
        kernel_id: 'k1',
        time: 1,
        source: 'worker'
      },
      sample(GiB),
      sample(7.8 * GiB)
    ]);
    const near = alerts.filter(a => a.kind === 'near_limit');
    expect(near.length).toBe(2);
    expect(near[0].message).toContain('VRAM near the limit');
    expect(near[0].message).toContain('7.5 GiB of 8 GiB (94 %)');
  });

  it('uses the notebook name in alerts', () => {
    let state = reduce(emptyState(), hello, opts(1)).state;
    const r = reduce(state, sample(7.9 * GiB), { ...opts(2), names: { k1: 'train.ipynb' } });
    state = r.state;
    expect(r.alerts[0].message.startsWith('train.ipynb (small): VRAM near the limit')).toBe(true);
  });

  it('notifies watchdog interrupts, kills and idle warnings as they come', () => {
    const event = (kind: string): EventsMessage => ({
      type: 'event',
      kind,
      message: 'because',
      kernel_id: 'k1',
      time: 1,
      source: kind === 'idle_warning' || kind === 'admin_release' ? 'server' : 'worker'
    });
    const { alerts } = run([
      hello,
      event('watchdog_interrupt'),
      event('watchdog_kill'),
      event('idle_warning'),
      event('admin_release'),
      event('lease_created')
    ]);
    expect(alerts.map(a => [a.kind, a.level])).toEqual([
      ['watchdog_interrupt', 'error'],
      ['watchdog_kill', 'error'],
      ['idle_warning', 'warning'],
      ['admin_release', 'warning']
    ]);
  });

  it('says queued once, then started when the kernel shows up', () => {
    const queued: EventsMessage = {
      type: 'event',
      kind: 'kernel_queued',
      message: 'waiting for a slice (vGPU 4 GiB · 10 %): position 1',
      kernel_id: 'k2',
      time: 1,
      source: 'server',
      position: 1
    };
    const { state, alerts } = run([hello, queued, queued]);
    expect(alerts.map(a => a.kind)).toEqual(['kernel_queued']);
    const started = withKernels(state, [kernel, { ...kernel, kernel_id: 'k2', lease_id: 'lease-2' }]);
    expect(started.alerts.map(a => a.kind)).toEqual(['kernel_started']);
    expect(withKernels(started.state, [kernel]).alerts).toEqual([]);
  });

  it('marks workers up and down, and their kernels', () => {
    const { state } = run([hello, { type: 'worker', worker: '127.0.0.1:5000', up: false, error: 'unreachable' }]);
    expect(state.pool?.workers[0].up).toBe(false);
    expect(state.pool?.workers[0].error).toBe('unreachable');
    expect(state.kernels.k1.worker_up).toBe(false);
  });

  it('replaces the queue', () => {
    const entry: IQueueEntry = {
      id: 'q1',
      position: 1,
      qos: 'medium',
      profile: 'large',
      since: 1,
      labels: {},
      request: { vram: 16 * GiB, compute: 50, count: 1, whole_device: false },
      description: '16 GiB · 50 %',
      notebook: '',
      hint: ''
    };
    const { state } = run([hello, { type: 'queue', queue: [entry] }]);
    expect(state.queue).toEqual([entry]);
    expect(state.pool?.queue_length).toBe(1);
  });

  it('does not mutate the state it is given', () => {
    const start = run([hello]).state;
    const frozen = JSON.stringify(start);
    reduce(start, sample(7.9 * GiB), opts(5));
    expect(JSON.stringify(start)).toBe(frozen);
  });
});

describe('staleness and connection', () => {
  it('is stale only when connected, with a worker up, and silent too long', () => {
    const { state, now } = run([hello]);
    expect(isStale(state, now + 5_000, 10)).toBe(false);
    expect(isStale(state, now + 11_000, 10)).toBe(true);
    expect(isStale({ ...state, connection: 'disconnected' }, now + 11_000, 10)).toBe(false);
    const down = run([hello, { type: 'worker', worker: '127.0.0.1:5000', up: false }]);
    expect(isStale(down.state, down.now + 60_000, 10)).toBe(false);
  });

  it('is live only while connected and not stale', () => {
    let t = 1000;
    const model = new VgpuModel(undefined, () => t);
    expect(model.live()).toBe(false); // connecting
    model.apply(hello);
    expect(model.live()).toBe(true);
    t = 12_000;
    expect(model.live()).toBe(false); // stale: a worker is up and nothing came for 11 s
    model.apply(sample(MiB));
    expect(model.live()).toBe(true);
    model.setConnection('disconnected', 'closed');
    expect(model.live()).toBe(false);
  });

  it('VgpuModel emits changes, alerts and refetch requests', () => {
    let t = 0;
    const model = new VgpuModel(undefined, () => t);
    const seen: string[] = [];
    model.changed.connect(() => seen.push('changed'));
    model.alerted.connect((_, a) => seen.push(a.kind));
    model.refetchRequested.connect(() => seen.push('refetch'));
    model.apply(hello);
    t = 1000;
    model.apply(sample(7.9 * GiB));
    model.apply(sample(MiB, 1, 'other'));
    expect(seen).toEqual(['changed', 'changed', 'near_limit', 'changed', 'refetch']);
    model.setConnection('disconnected', 'closed');
    expect(model.state.connection).toBe('disconnected');
    expect(model.state.error).toBe('closed');
  });
});
