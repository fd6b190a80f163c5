/**
 * Talking to the tf_jupyter server extension: REST (`GET kernels`, `GET profiles`) and the events
 * WebSocket, kept open by a `Poll` that reconnects with backoff.
 *
 * Routes and bodies are typed from `tf_jupyter/openapi.yaml` (generated `api.d.ts`), so a route or
 * a shape that is not in the API description does not compile.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import { IPoll, Poll } from '@lumino/polling';

import type { paths } from './api';
import { EventsMessage, IAdminView, IKernel, IKernelHistory, IPool, IProfile, VgpuModel } from './model';

export const API = 'tf-vgpu/api';

/** The routes of the API that answer `GET` with JSON, and what they answer (200). */
type JsonGet = {
  [P in keyof paths]: paths[P] extends {
    get: { responses: { 200: { content: { 'application/json': infer T } } } };
  }
    ? T
    : never;
};

/** GET a JSON route of the vGPU API; throws with the server's message on an error status. */
export async function requestAPI<P extends keyof paths>(route: P, init: RequestInit = {}): Promise<JsonGet[P]> {
  return requestJSON<JsonGet[P]>(route, init);
}

/** A request to a path under the server's base URL; its JSON, or an error with the server's message. */
export async function requestJSON<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, path.replace(/^\//, ''));
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null; // an HTML error page: its status says enough
  }
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response, (data && data.message) || `${response.status} ${response.statusText}`);
  }
  return data as T;
}

export async function fetchKernels(): Promise<IKernel[]> {
  return (await requestAPI('/tf-vgpu/api/kernels')).kernels;
}

export async function fetchPool(): Promise<IPool> {
  return requestAPI('/tf-vgpu/api/pool');
}

export async function fetchHistory(kernelId: string): Promise<IKernelHistory> {
  return requestJSON<IKernelHistory>(`${API}/kernels/${encodeURIComponent(kernelId)}/history`);
}

export async function fetchAdmin(): Promise<IAdminView> {
  return requestAPI('/tf-vgpu/api/admin');
}

/** Release another principal's lease as an admin (the worker ends its kernel). */
export async function releaseLease(worker: string, leaseId: string): Promise<void> {
  await requestJSON(`${API}/admin/release`, {
    method: 'POST',
    body: JSON.stringify({ worker, lease_id: leaseId })
  });
}

export async function fetchProfiles(): Promise<IProfile[]> {
  return (await requestAPI('/tf-vgpu/api/profiles')).profiles;
}

/** The events WebSocket URL with the token where JupyterLab would put it (as for kernels). */
export function eventsUrl(settings: ServerConnection.ISettings = ServerConnection.makeSettings()): string {
  let url = URLExt.join(settings.wsUrl, API, 'events');
  if (settings.token) {
    url += `?token=${encodeURIComponent(settings.token)}`;
  }
  return url;
}

/**
 * Reconnect waits: from 1 s, growing (doubling, with jitter) up to 30 s while connecting fails;
 * back to 1 s once a connection delivered messages.
 */
export const EVENTS_FREQUENCY: IPoll.Frequency = { interval: 1000, backoff: 2, max: 30_000 };

/**
 * Keeps one events WebSocket open, feeding `model`. Each tick of the poll opens a socket and lasts
 * as long as it stays open: a socket that closed before any message is a failure (the poll backs
 * off), one that delivered messages a success (the next try comes after the base interval).
 */
export class EventsConnection {
  constructor(
    model: VgpuModel,
    makeSocket: (url: string) => WebSocket = url => new WebSocket(url),
    frequency: IPoll.Frequency = EVENTS_FREQUENCY
  ) {
    this._model = model;
    this._makeSocket = makeSocket;
    this._poll = new Poll<void, Error>({
      auto: false,
      name: 'tf-jupyter-vgpu:events',
      // The first try follows a wait of 0 (start): its failure is retried after the base interval,
      // since Poll's jittered backoff draws from [interval, growth × last wait] and a last wait of
      // 0 would make the next waits a few milliseconds.
      factory: state => this._connect(state.interval >= frequency.interval),
      frequency,
      standby: 'never'
    });
    this._poll.ticked.connect((_, state) => {
      if (state.phase === 'rejected' || state.phase === 'resolved' || state.phase === 'reconnected') {
        const seconds = Math.max(1, Math.ceil(state.interval / 1000));
        this._model.setConnection('disconnected', `${this._why}; retrying in ${seconds} s`);
      }
    });
  }

  /** The poll that reconnects (its state says when the next try is). */
  get poll(): Poll<void, Error> {
    return this._poll;
  }

  start(): void {
    void this._poll.start();
  }

  dispose(): void {
    this._poll.dispose();
    this._socket?.close();
    this._socket = null;
  }

  /**
   * Open a socket; settles when it closes: resolved if it delivered messages, else rejected
   * (so that the poll backs off) or, with `backOff` false, resolved (retried after the interval).
   */
  private _connect(backOff: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const state = this._model.state;
      this._model.setConnection(state.connection === 'connecting' ? 'connecting' : 'disconnected', state.error);
      let socket: WebSocket;
      try {
        socket = this._makeSocket(eventsUrl());
      } catch (err) {
        this._why = `cannot open the events socket: ${err}`;
        if (backOff) {
          reject(new Error(this._why));
        } else {
          resolve();
        }
        return;
      }
      this._socket = socket;
      let heard = false;
      socket.onmessage = event => {
        heard = true;
        try {
          this._model.apply(JSON.parse(event.data) as EventsMessage);
        } catch (err) {
          console.warn('tf-jupyter-vgpu: unreadable events message', err);
        }
      };
      socket.onclose = event => {
        if (this._socket !== socket) {
          return;
        }
        this._socket = null;
        this._why =
          event.code === 1011
            ? 'the vGPU pool is not available on this server (see its log)'
            : `events connection closed (code ${event.code})`;
        if (heard || !backOff) {
          resolve();
        } else {
          reject(new Error(this._why));
        }
      };
    });
  }

  private _model: VgpuModel;
  private _makeSocket: (url: string) => WebSocket;
  private _poll: Poll<void, Error>;
  private _socket: WebSocket | null = null;
  private _why = '';
}
