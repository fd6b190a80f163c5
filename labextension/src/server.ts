/**
 * Talking to the tf_jupyter server extension: REST (`GET kernels`) and the events WebSocket,
 * which reconnects by itself with backoff.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { EventsMessage, IKernel, IProfile, VgpuModel } from './model';

export const API = 'tf-vgpu/api';

/** GET a JSON route of the vGPU API; throws with the server's message on an error status. */
export async function requestAPI<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, API, path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new ServerConnection.ResponseError(response, (data && data.message) || text);
  }
  return data as T;
}

export async function fetchKernels(): Promise<IKernel[]> {
  const data = await requestAPI<{ kernels: IKernel[] }>('kernels');
  return data.kernels;
}

export async function fetchProfiles(): Promise<IProfile[]> {
  const data = await requestAPI<{ profiles: IProfile[] }>('profiles');
  return data.profiles;
}

/** Reconnect delays: 1 s, 2 s, 4 s ... capped at 30 s, reset once a connection opened. */
export function backoffDelay(attempt: number): number {
  return Math.min(30_000, 1000 * 2 ** Math.max(0, attempt));
}

/** The events WebSocket URL with the token where JupyterLab would put it (as for kernels). */
export function eventsUrl(settings: ServerConnection.ISettings = ServerConnection.makeSettings()): string {
  let url = URLExt.join(settings.wsUrl, API, 'events');
  if (settings.token) {
    url += `?token=${encodeURIComponent(settings.token)}`;
  }
  return url;
}

/** Keeps one events WebSocket open, feeding `model`; on close it waits and opens another. */
export class EventsConnection {
  constructor(model: VgpuModel, makeSocket: (url: string) => WebSocket = url => new WebSocket(url)) {
    this._model = model;
    this._makeSocket = makeSocket;
  }

  start(): void {
    this._stopped = false;
    this._open();
  }

  dispose(): void {
    this._stopped = true;
    if (this._timer !== undefined) {
      clearTimeout(this._timer);
    }
    this._socket?.close();
    this._socket = null;
  }

  private _open(): void {
    if (this._stopped) {
      return;
    }
    this._model.setConnection(this._attempt ? 'disconnected' : 'connecting', this._model.state.error);
    let socket: WebSocket;
    try {
      socket = this._makeSocket(eventsUrl());
    } catch (err) {
      this._retry(`cannot open the events socket: ${err}`);
      return;
    }
    this._socket = socket;
    socket.onopen = () => {
      this._attempt = 0;
    };
    socket.onmessage = event => {
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
      const why =
        event.code === 1011
          ? 'the vGPU pool is not available on this server (see its log)'
          : `events connection closed (code ${event.code})`;
      this._retry(why);
    };
  }

  private _retry(why: string): void {
    if (this._stopped) {
      return;
    }
    const delay = backoffDelay(this._attempt);
    this._attempt += 1;
    this._model.setConnection('disconnected', `${why}; retrying in ${Math.round(delay / 1000)} s`);
    this._timer = setTimeout(() => this._open(), delay);
  }

  private _model: VgpuModel;
  private _makeSocket: (url: string) => WebSocket;
  private _socket: WebSocket | null = null;
  private _attempt = 0;
  private _stopped = false;
  private _timer: ReturnType<typeof setTimeout> | undefined;
}
