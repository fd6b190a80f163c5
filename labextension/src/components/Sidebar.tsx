import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { kernelAvailability, sliceText } from '../availability';
import { formatBytes, formatBytesPair, formatDuration, formatPercent } from '../format';
import {
  IDevice,
  IKernel,
  IProfile,
  IQueueEntry,
  IWorker,
  isNearLimit,
  usedFraction,
  VgpuModel
} from '../model';
import { Sparkline } from './Sparkline';

/**
 * A coloured symbol next to words that say the same thing: the colour is a second cue, never the
 * only one, and it is hidden from screen readers (the words are read).
 */
function Mark(props: { children: string }): JSX.Element {
  return (
    <span className="tf-vgpu-mark" aria-hidden="true">
      {props.children}
    </span>
  );
}

/** A horizontal bar with its value also in words (never colour alone). */
function Bar(props: { fraction: number; near: boolean; label: string }): JSX.Element {
  const pct = Math.round(Math.min(1, Math.max(0, props.fraction)) * 100);
  return (
    <div
      className={`tf-vgpu-bar${props.near ? ' tf-vgpu-near' : ''}`}
      role="meter"
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={pct}
      aria-label={props.label}
    >
      <div className="tf-vgpu-bar-fill" style={{ width: `${pct}%` }} />
    </div>
  );
}

function DeviceRow(props: { device: IDevice }): JSX.Element {
  const d = props.device;
  const name = d.kind === 'host' ? `${d.name || 'host'} — host device (no GPU)` : d.name || d.uuid;
  const modes = d.modes.length ? d.modes.join(', ') : 'unknown';
  return (
    <li className="tf-vgpu-device" aria-label={`device ${name}`}>
      <div className="tf-vgpu-device-name">
        #{d.index} {name}
      </div>
      <Bar
        fraction={usedFraction(d.vram_leased, d.vram_total)}
        near={false}
        label={`VRAM leased ${formatBytes(d.vram_leased)} of ${formatBytes(d.vram_total)}`}
      />
      <dl className="tf-vgpu-facts">
        <dt>VRAM</dt>
        <dd>
          {formatBytes(d.vram_leased)} leased · {formatBytes(d.vram_used)} used · {formatBytes(d.vram_total)} total
        </dd>
        <dt>Compute</dt>
        <dd>
          {formatPercent(d.compute_leased)} leased of {formatPercent(d.compute_capacity)}
        </dd>
        <dt>Utilization</dt>
        <dd>{formatPercent(Math.round(d.utilization))}</dd>
        <dt>Isolation</dt>
        <dd>
          {modes}; memory limit by {d.memory_enforcement || 'unknown'}
        </dd>
      </dl>
    </li>
  );
}

function WorkerRow(props: { worker: IWorker }): JSX.Element {
  const w = props.worker;
  return (
    <li className={`tf-vgpu-worker ${w.up ? 'tf-vgpu-up' : 'tf-vgpu-down'}`} aria-label={`worker ${w.address}`}>
      <div className="tf-vgpu-worker-head">
        <span className="tf-vgpu-state">
          <Mark>{w.up ? '●' : '○'}</Mark> {w.up ? 'up' : 'down'}
        </span>{' '}
        {w.address}
        {w.backend && <span className="tf-vgpu-dim"> · {w.backend}</span>}
        <span className="tf-vgpu-dim"> · {w.leases} lease{w.leases === 1 ? '' : 's'}</span>
      </div>
      {!w.up && w.error && <div className="tf-vgpu-error">{w.error}</div>}
      <ul className="tf-vgpu-devices">
        {w.devices.map(d => (
          <DeviceRow key={d.uuid} device={d} />
        ))}
      </ul>
    </li>
  );
}

function KernelRow(props: { model: VgpuModel; kernel: IKernel; now: number }): JSX.Element {
  const { model, kernel: k } = props;
  const name = model.names[k.kernel_id] || `kernel ${k.kernel_id.slice(0, 8)}`;
  const used = k.usage?.vram_used ?? 0;
  const limit = k.slice?.vram ?? 0;
  const fraction = usedFraction(used, limit);
  const near = isNearLimit(used, limit, model.settings.warningThreshold);
  const where = k.device
    ? `${k.worker} · ${k.device.kind === 'host' ? 'host device (no GPU)' : k.device.name}`
    : `${k.worker} · device unknown`;
  const vramText = limit
    ? `${formatBytesPair(used, limit)} (${formatPercent(Math.round(fraction * 100))})${near ? ' — near the limit' : ''}`
    : 'no slice information yet';
  return (
    <li
      className={`tf-vgpu-kernel${near ? ' tf-vgpu-near' : ''}`}
      data-kernel-id={k.kernel_id}
      data-vram-used={used}
      data-vram-limit={limit}
      aria-label={`kernel of ${name}`}
    >
      <div className="tf-vgpu-kernel-head">
        <span className="tf-vgpu-kernel-name">{name}</span>
        <span className="tf-vgpu-dim"> · {k.profile || 'custom'}</span>
        {!k.worker_up && <span className="tf-vgpu-error"> · worker down</span>}
      </div>
      <div className="tf-vgpu-dim">{where}</div>
      <Bar fraction={fraction} near={near} label={`VRAM used ${vramText}`} />
      <div className="tf-vgpu-kernel-usage">
        <span className="tf-vgpu-vram">VRAM {vramText}</span>
        <span className="tf-vgpu-util">
          {' '}
          · utilization {formatPercent(Math.round(k.usage?.utilization ?? 0))}
          {k.slice ? ` of ${formatPercent(k.slice.compute)} slice` : ''}
        </span>
      </div>
      <Sparkline points={model.state.history[k.kernel_id] || []} now={props.now} />
    </li>
  );
}

function QueueRow(props: { entry: IQueueEntry; now: number }): JSX.Element {
  const e = props.entry;
  const since = new Date(e.since * 1000);
  return (
    <li className="tf-vgpu-queue-entry" aria-label={`queue position ${e.position}`}>
      <span className="tf-vgpu-position">#{e.position}</span> {e.profile || 'custom'} · {e.description} ·{' '}
      {e.qos} · waiting since {since.toLocaleTimeString()} ({formatDuration(props.now / 1000 - e.since)})
    </li>
  );
}

function ProfileRow(props: { model: VgpuModel; profile: IProfile; onStart?: (kernelspec: string) => void }) {
  const p = props.profile;
  const a = kernelAvailability(p, props.model.state.pool, props.model.live());
  const slice = p.display_name.replace(/^Python 3 · /, '') || sliceText(p);
  return (
    <li className="tf-vgpu-profile" aria-label={`profile ${p.name}`}>
      <button
        className="jp-mod-styled tf-vgpu-start"
        aria-label={`New notebook on ${p.name}: ${slice}, ${a.text}`}
        title={p.description}
        onClick={() => props.onStart?.(p.kernelspec)}
      >
        {p.name}
      </button>{' '}
      {slice} ·{' '}
      <span className={a.fits === null ? 'tf-vgpu-dim' : a.fits ? 'tf-vgpu-fits' : 'tf-vgpu-waits'} title={a.description}>
        {a.text}
      </span>
    </li>
  );
}

function ConnectionBanner(props: { model: VgpuModel }): JSX.Element | null {
  const { state } = props.model;
  if (state.connection === 'connecting') {
    return (
      <div className="tf-vgpu-banner" role="status">
        Connecting to the vGPU events…
      </div>
    );
  }
  if (state.connection === 'disconnected') {
    return (
      <div className="tf-vgpu-banner tf-vgpu-banner-bad" role="alert">
        ⚠ Disconnected — the figures below are not live. {state.error}
      </div>
    );
  }
  if (props.model.stale()) {
    const age = (Date.now() - state.lastMessage) / 1000;
    return (
      <div className="tf-vgpu-banner tf-vgpu-banner-bad" role="alert">
        ⚠ Stale — no update for {formatDuration(age)}.
      </div>
    );
  }
  return (
    <div className="tf-vgpu-banner tf-vgpu-banner-ok" role="status">
      <Mark>●</Mark> Live
    </div>
  );
}

export function VgpuView(props: { model: VgpuModel; onStart?: (kernelspec: string) => void }): JSX.Element {
  const { model } = props;
  const { state, settings } = model;
  const now = Date.now();
  const kernels = Object.values(state.kernels).sort((a, b) => a.started - b.started);
  return (
    <div className="tf-vgpu-view">
      <h2 className="tf-vgpu-title">vGPU</h2>
      <ConnectionBanner model={model} />
      {settings.showPool && (
        <section className="tf-vgpu-section tf-vgpu-pool" aria-label="Pool">
          <h3>Pool{state.pool ? ` · ${state.pool.policy}` : ''}</h3>
          {!state.pool && <p className="tf-vgpu-dim">No pool information yet.</p>}
          {state.pool && state.pool.workers.length === 0 && <p className="tf-vgpu-dim">No workers configured.</p>}
          <ul>
            {(state.pool?.workers ?? []).map(w => (
              <WorkerRow key={w.address} worker={w} />
            ))}
          </ul>
        </section>
      )}
      {settings.showKernels && (
        <section className="tf-vgpu-section tf-vgpu-kernels" aria-label="My kernels">
          <h3>My kernels ({kernels.length})</h3>
          {kernels.length === 0 && <p className="tf-vgpu-dim">No kernel holds a vGPU slice.</p>}
          <ul>
            {kernels.map(k => (
              <KernelRow key={k.kernel_id} model={model} kernel={k} now={now} />
            ))}
          </ul>
        </section>
      )}
      {settings.showProfiles && model.profiles.length > 0 && (
        <section className="tf-vgpu-section tf-vgpu-profiles" aria-label="New vGPU notebook">
          <h3>New vGPU notebook</h3>
          <ul>
            {model.profiles.map(p => (
              <ProfileRow key={p.name} model={model} profile={p} onStart={props.onStart} />
            ))}
          </ul>
        </section>
      )}
      {settings.showQueue && (
        <section className="tf-vgpu-section tf-vgpu-queue" aria-label="Queue">
          <h3>Queue ({state.queue.length})</h3>
          {state.queue.length === 0 && <p className="tf-vgpu-dim">Nobody is waiting for a slice.</p>}
          <ul>
            {state.queue.map(e => (
              <QueueRow key={e.id} entry={e} now={now} />
            ))}
          </ul>
        </section>
      )}
    </div>
  );
}

/** The left sidebar panel "vGPU". */
export class VgpuPanel extends ReactWidget {
  constructor(model: VgpuModel, onStart?: (kernelspec: string) => void) {
    super();
    this._model = model;
    this._onStart = onStart;
    this.addClass('tf-vgpu-panel');
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this._model.changed}>
        {() => <VgpuView model={this._model} onStart={this._onStart} />}
      </UseSignal>
    );
  }

  private _model: VgpuModel;
  private _onStart?: (kernelspec: string) => void;
}
