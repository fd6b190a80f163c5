import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';

import { EventsMessage, VgpuModel } from '../model';
import { EventsConnection } from '../server';

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
  pool: { workers: [], policy: 'binpack', queue_length: 0 },
  kernels: [],
  queue: []
};

describe('EventsConnection', () => {
  beforeEach(() => {
    FakeSocket.made = [];
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('opens the events URL, goes live on hello, says disconnected and reconnects with backoff', () => {
    const model = new VgpuModel();
    const conn = new EventsConnection(model, url => new FakeSocket(url) as unknown as WebSocket);
    conn.start();
    expect(model.state.connection).toBe('connecting');
    const first = FakeSocket.made[0];
    expect(first.url).toMatch(/tf-vgpu\/api\/events/);
    first.onopen?.();
    first.onmessage?.({ data: JSON.stringify(hello) });
    expect(model.state.connection).toBe('connected');

    first.onclose?.({ code: 1011 });
    expect(model.state.connection).toBe('disconnected');
    expect(model.state.error).toMatch(/pool is not available.*retrying in 1 s/);
    vi.advanceTimersByTime(999);
    expect(FakeSocket.made.length).toBe(1);
    vi.advanceTimersByTime(1);
    expect(FakeSocket.made.length).toBe(2);

    // Still failing: the wait doubles.
    FakeSocket.made[1].onclose?.({ code: 1006 });
    expect(model.state.error).toMatch(/code 1006.*retrying in 2 s/);
    vi.advanceTimersByTime(2000);
    expect(FakeSocket.made.length).toBe(3);
    FakeSocket.made[2].onopen?.();
    FakeSocket.made[2].onmessage?.({ data: JSON.stringify(hello) });
    expect(model.state.connection).toBe('connected');
    expect(model.state.error).toBe('');

    conn.dispose();
    expect(FakeSocket.made[2].closed).toBe(true);
    vi.advanceTimersByTime(60_000);
    expect(FakeSocket.made.length).toBe(3);
  });
});
