import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { EventsMessage, VgpuModel } from '../model';
import { EVENTS_FREQUENCY, EventsConnection } from '../server';

/** A stand-in for the browser's WebSocket: the test opens, feeds and closes it. */
class FakeSocket {
  static made: FakeSocket[] = [];
  url: string;
  onopen: (() => void) | null = null;
  onmessage: ((e: { data: string }) => void) | null = null;
  onclose: ((e: { code: number }) => void) | null = null;
  closed = false;
  constructor(url: string) {
    this.url = url;
    FakeSocket.made.push(this);
  }
  close() {
    this.closed = true;
  }
}

const hello: EventsMessage = {
  type: 'hello',
  pool: { workers: [], policy: 'binpack', queue_length: 0, admin: false },
  kernels: [],
  queue: []
};

/** The wait the model's banner announces, in seconds. */
function announced(model: VgpuModel): number {
  const match = /retrying in (\d+) s/.exec(model.state.error);
  expect(match, model.state.error).not.toBeNull();
  return Number(match![1]);
}

describe('EventsConnection', () => {
  let connection: EventsConnection | null = null;
  beforeEach(() => {
    FakeSocket.made = [];
    vi.useFakeTimers();
  });
  afterEach(() => {
    connection?.dispose();
    connection = null;
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  function connect(model: VgpuModel): EventsConnection {
    connection = new EventsConnection(model, url => new FakeSocket(url) as unknown as WebSocket);
    connection.start();
    return connection;
  }

  it('opens the events URL, goes live on hello, says why it is down and reconnects when it said it would', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0); // no jitter: each wait is the base interval
    const model = new VgpuModel();
    const conn = connect(model);
    await vi.advanceTimersByTimeAsync(0);
    expect(model.state.connection).toBe('connecting');
    expect(FakeSocket.made.length).toBe(1);
    const first = FakeSocket.made[0];
    expect(first.url).toMatch(/tf-vgpu\/api\/events/);
    first.onopen?.();
    first.onmessage?.({ data: JSON.stringify(hello) });
    expect(model.state.connection).toBe('connected');

    // The pool is not available: accepted, then closed with 1011 before any message.
    first.onclose?.({ code: 1011 });
    await vi.advanceTimersByTimeAsync(0);
    expect(model.state.connection).toBe('disconnected');
    expect(model.state.error).toMatch(/pool is not available.*retrying in 1 s/);
    expect(conn.poll.state.interval).toBe(1000);
    await vi.advanceTimersByTimeAsync(998);
    expect(FakeSocket.made.length).toBe(1);
    await vi.advanceTimersByTimeAsync(2);
    expect(FakeSocket.made.length).toBe(2);
    expect(model.state.connection).toBe('disconnected'); // not live until a message comes

    FakeSocket.made[1].onclose?.({ code: 1006 });
    await vi.advanceTimersByTimeAsync(0);
    expect(model.state.error).toMatch(/code 1006.*retrying in 1 s/);
    await vi.advanceTimersByTimeAsync(1000);
    expect(FakeSocket.made.length).toBe(3);
    FakeSocket.made[2].onopen?.();
    FakeSocket.made[2].onmessage?.({ data: JSON.stringify(hello) });
    expect(model.state.connection).toBe('connected');
    expect(model.state.error).toBe('');

    conn.dispose();
    expect(FakeSocket.made[2].closed).toBe(true);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.made.length).toBe(3);
  });

  it('backs off while connecting fails, up to 30 s, and starts again from 1 s after a good connection', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0.999999); // the longest wait the jitter allows
    const model = new VgpuModel();
    const conn = connect(model);
    await vi.advanceTimersByTimeAsync(0);
    const waits: number[] = [];
    for (let i = 0; i < 12; i++) {
      FakeSocket.made[FakeSocket.made.length - 1].onclose?.({ code: 1006 });
      await vi.advanceTimersByTimeAsync(0);
      const wait = conn.poll.state.interval;
      waits.push(wait);
      expect(announced(model)).toBe(Math.max(1, Math.ceil(wait / 1000)));
      const before = FakeSocket.made.length;
      await vi.advanceTimersByTimeAsync(wait - 1);
      expect(FakeSocket.made.length).toBe(before); // not earlier than announced
      await vi.advanceTimersByTimeAsync(1);
      expect(FakeSocket.made.length).toBe(before + 1);
    }
    expect(waits[0]).toBe(EVENTS_FREQUENCY.interval); // never a retry within the second
    expect(Math.max(...waits)).toBe(EVENTS_FREQUENCY.max);
    expect(waits.slice(-3)).toEqual([30_000, 30_000, 30_000]);
    for (let i = 1; i < waits.length; i++) {
      expect(waits[i]).toBeGreaterThanOrEqual(waits[i - 1]); // it only grows
    }

    // The worker is back: a connection that delivered messages resets the wait.
    const good = FakeSocket.made[FakeSocket.made.length - 1];
    good.onopen?.();
    good.onmessage?.({ data: JSON.stringify(hello) });
    good.onclose?.({ code: 1006 });
    await vi.advanceTimersByTimeAsync(0);
    expect(conn.poll.state.interval).toBe(EVENTS_FREQUENCY.interval);
    expect(model.state.error).toMatch(/retrying in 1 s/);
  });

  it('says why when the socket cannot even be made, and retries', async () => {
    vi.spyOn(Math, 'random').mockReturnValue(0);
    const model = new VgpuModel();
    let tries = 0;
    connection = new EventsConnection(model, () => {
      tries += 1;
      throw new Error('blocked by the browser');
    });
    connection.start();
    await vi.advanceTimersByTimeAsync(0);
    expect(model.state.error).toMatch(/cannot open the events socket: Error: blocked by the browser; retrying in 1 s/);
    await vi.advanceTimersByTimeAsync(1000);
    expect(tries).toBe(2);
  });
});
