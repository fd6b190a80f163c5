/** The vGPU panel's content: plain React (no JupyterLab imports), so it renders in unit tests too. */
import * as React from 'react';

import { kernelAvailability, sliceText } from '../availability';
import { utilizationHelp, utilizationText } from '../chart';
import { formatBytes, formatBytesPair, formatDuration, formatPercent } from '../format';
import {
  IHistoryPoint,
  IKernel,
  IMapDevice,
  IProfile,
  isAdmin,
  IWaiting,
  IWorker,
  isNearLimit,
  leaseCount,
  usedFraction,
  VgpuModel
} from '../model';
import { quotaMeters, reasonText, waitingNotebook, waitingSummary } from '../why';
import { AdminSection } from './Admin';
import { DeviceMap } from './DeviceMap';
import { KernelChart } from './KernelChart';

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

/**
 * Phrases joined by " · " that wrap only between phrases, never inside one ("no free slice now"
 * stays on one line). Empty phrases are left out.
 */
export function Parts(props: { items: (string | false | null | undefined)[]; className?: string }): JSX.Element {
  const items = props.items.filter((x): x is string => !!x);
  return (
    <span className={props.className}>
      {items.map((item, i) => (
        <React.Fragment key={i}>
          {i > 0 && ' · '}
          <span className="tf-vgpu-part">{item}</span>
        </React.Fragment>
      ))}
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

function DeviceRow(props: { device: IMapDevice; names: { [kernelId: string]: string } }): JSX.Element {
  const d = props.device;
  const name = d.kind === 'host' ? `${d.name || 'host'} — host device (no GPU)` : d.name || d.uuid;
  const modes = d.modes.length ? d.modes.join(', ') : 'unknown';
  return (
    <li className="tf-vgpu-device" aria-label={`device ${name}`}>
      <div className="tf-vgpu-device-name tf-vgpu-ellipsis" title={name}>
        #{d.index} {name}
      </div>
      <DeviceMap device={d} names={props.names} />
      <div className="tf-vgpu-facts">
        <div>
          <span className="tf-vgpu-fact">VRAM</span>{' '}
          <Parts
            items={[
              `${formatBytes(d.vram_leased)} leased`,
              `${formatBytes(d.vram_used)} used`,
              `${formatBytes(d.vram_total)} total`
            ]}
          />
        </div>
        <div>
          <span className="tf-vgpu-fact">Compute</span>{' '}
          <Parts items={[`${formatPercent(d.compute_leased)} leased of ${formatPercent(d.compute_capacity)}`]} />
        </div>
        <div title="Share of the device's time running work, of the whole device.">
          <span className="tf-vgpu-fact">Utilisation</span>{' '}
          <Parts items={[`${formatPercent(Math.round(d.utilization))} of the ${d.kind === 'host' ? 'host' : 'GPU'}`]} />
        </div>
        <div>
          <span className="tf-vgpu-fact">Isolation</span>{' '}
          <Parts items={[modes, `memory limit by ${d.memory_enforcement || 'unknown'}`]} />
        </div>
      </div>
    </li>
  );
}

function WorkerRow(props: { worker: IWorker; names: { [kernelId: string]: string } }): JSX.Element {
  const w = props.worker;
  return (
    <li className={`tf-vgpu-worker ${w.up ? 'tf-vgpu-up' : 'tf-vgpu-down'}`} aria-label={`worker ${w.address}`}>
      <div className="tf-vgpu-worker-head">
        <span className="tf-vgpu-state tf-vgpu-part">
          <Mark>{w.up ? '●' : '○'}</Mark> {w.up ? 'up' : 'down'}
        </span>{' '}
        <span className="tf-vgpu-part">{w.address}</span>{' '}
        {' · '}
        <Parts className="tf-vgpu-dim" items={[w.backend, plural(w.leases, 'lease')]} />
      </div>
      {!w.up && w.error && <div className="tf-vgpu-error">{w.error}</div>}
      <ul className="tf-vgpu-devices">
        {w.devices.map(d => (
          <DeviceRow key={d.uuid} device={d} names={props.names} />
        ))}
      </ul>
    </li>
  );
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

interface IKernelRowProps {
  kernel: IKernel;
  /** The notebook's name ('' when unknown). */
  name: string;
  points: IHistoryPoint[];
  threshold: number;
}

/** A kernel's card; drawn again only when its own figures change (many kernels stay smooth). */
const KernelRow = React.memo(function KernelRow(props: IKernelRowProps): JSX.Element {
  const { kernel: k } = props;
  const name = props.name || `kernel ${k.kernel_id.slice(0, 8)}`;
  const used = k.usage?.vram_used ?? 0;
  const limit = k.slice?.vram ?? 0;
  const fraction = usedFraction(used, limit);
  const near = isNearLimit(used, limit, props.threshold);
  const host = k.device?.kind === 'host';
  const where = k.device
    ? `${k.worker} · ${host ? 'host device (no GPU)' : k.device.name}`
    : `${k.worker} · device unknown`;
  const vramText = limit
    ? `${formatBytesPair(used, limit)} (${formatPercent(Math.round(fraction * 100))})${near ? ' — near the limit' : ''}`
    : 'no slice information yet';
  return (
    <li
      className={`tf-vgpu-kernel${near ? ' tf-vgpu-near' : ''}`}
      data-testid="tf-vgpu-kernel"
      data-kernel-id={k.kernel_id}
      data-vram-used={used}
      data-vram-limit={limit}
      aria-label={`kernel of ${name}`}
    >
      <div className="tf-vgpu-kernel-head tf-vgpu-ellipsis" title={`${name} · ${k.profile || 'custom'}`}>
        <span className="tf-vgpu-kernel-name">{name}</span>
        <span className="tf-vgpu-dim"> · {k.profile || 'custom'}</span>
        {!k.worker_up && <span className="tf-vgpu-error"> · worker down</span>}
      </div>
      <div className="tf-vgpu-dim tf-vgpu-ellipsis" title={where}>
        {where}
      </div>
      <div className="tf-vgpu-kernel-usage">
        <div className="tf-vgpu-vram">
          <span className="tf-vgpu-part">VRAM {vramText}</span>
        </div>
        <div className="tf-vgpu-util" title={utilizationHelp(k.slice?.compute)}>
          <Parts items={utilizationText(k.usage?.utilization ?? 0, k.slice?.compute, host).split(' · ')} />
        </div>
      </div>
      <KernelChart points={props.points} sliceCompute={k.slice?.compute} label={name} />
    </li>
  );
});

const NO_POINTS: IHistoryPoint[] = [];

function QuotaSection(props: { workers: IWorker[] }): JSX.Element | null {
  const rows = props.workers.map(w => ({ worker: w, meters: quotaMeters(w) })).filter(r => r.meters.length);
  if (!rows.length) {
    return null;
  }
  return (
    <section className="tf-vgpu-section tf-vgpu-quota" data-testid="tf-vgpu-quota" aria-labelledby="tf-vgpu-quota-h">
      <h3 id="tf-vgpu-quota-h">Your quota</h3>
      <ul>
        {rows.map(({ worker, meters }) => (
          <li key={worker.address} className="tf-vgpu-quota-worker">
            <div className="tf-vgpu-dim tf-vgpu-ellipsis" title={worker.address}>
              {worker.address}
            </div>
            {meters.map(m => (
              <div key={m.name} className="tf-vgpu-meter-row">
                <span className="tf-vgpu-meter-name">{m.name}</span>
                {m.limit !== null && (
                  <Bar fraction={m.fraction} near={m.fraction >= 1} label={`${m.name} quota: ${m.text}`} />
                )}
                <span className="tf-vgpu-meter-text">{m.text}</span>
              </div>
            ))}
          </li>
        ))}
      </ul>
    </section>
  );
}

function QueueRow(props: { entry: IWaiting; now: number }): JSX.Element {
  const e = props.entry;
  const notebook = waitingNotebook(e);
  return (
    <li
      className="tf-vgpu-queue-entry"
      data-testid="tf-vgpu-waiting"
      data-reason={e.reason || ''}
      aria-label={`waiting start ${notebook}, position ${e.position}`}
    >
      <div className="tf-vgpu-ellipsis" title={`${notebook} · ${e.description}`}>
        <strong>{notebook}</strong> <span className="tf-vgpu-dim">· {e.description}</span>
      </div>
      <div title={e.message || reasonText(e.reason)}>
        <Parts items={waitingSummary(e, props.now / 1000).split(' · ')} />
      </div>
      {e.message && <div className="tf-vgpu-reason">{e.message}</div>}
      {e.hint && <div className="tf-vgpu-hint">{e.hint}</div>}
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
      </button>
      <span className="tf-vgpu-profile-text" title={a.description}>
        <span className="tf-vgpu-part">{slice}</span> ·{' '}
        <span className={`tf-vgpu-part ${a.fits === null ? 'tf-vgpu-dim' : a.fits ? 'tf-vgpu-fits' : 'tf-vgpu-waits'}`}>
          {a.text}
        </span>
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

/** Marks each committed render of the panel, so a browser test can measure render time. */
export const RENDERED_MARK = 'tf-vgpu-panel-rendered';

export function VgpuView(props: {
  model: VgpuModel;
  onStart?: (kernelspec: string) => void;
  onRelease?: (worker: string, leaseId: string) => Promise<void>;
  /** Asks the user to confirm (a dialog); resolves true to go ahead. */
  confirm?: (title: string, body: string, action: string) => Promise<boolean>;
}): JSX.Element {
  const { model } = props;
  const { state, settings } = model;
  const now = Date.now();
  const kernels = Object.values(state.kernels).sort((a, b) => a.started - b.started);
  const workers = state.pool?.workers ?? [];
  const leases = leaseCount(state.pool);
  React.useEffect(() => {
    performance.mark(RENDERED_MARK);
  });
  return (
    <div className="tf-vgpu-view">
      <h2 className="tf-vgpu-title">vGPU</h2>
      <ConnectionBanner model={model} />
      {settings.showPool && (
        <section className="tf-vgpu-section tf-vgpu-pool" aria-labelledby="tf-vgpu-pool-h">
          <h3 id="tf-vgpu-pool-h" className="tf-vgpu-ellipsis">
            Pool{state.pool ? ` · ${state.pool.policy} · ` : ''}
            {state.pool && (
              <span data-testid="tf-vgpu-lease-count" data-count={leases}>
                {plural(leases, 'lease')}
              </span>
            )}
          </h3>
          {!state.pool && <p className="tf-vgpu-dim">No pool information yet.</p>}
          {state.pool && workers.length === 0 && <p className="tf-vgpu-dim">No workers configured.</p>}
          <ul>
            {workers.map(w => (
              <WorkerRow key={w.address} worker={w} names={model.names} />
            ))}
          </ul>
        </section>
      )}
      {settings.showPool && <QuotaSection workers={workers} />}
      {settings.showKernels && (
        <section className="tf-vgpu-section tf-vgpu-kernels" aria-labelledby="tf-vgpu-kernels-h">
          <h3 id="tf-vgpu-kernels-h">
            My kernels (<span data-testid="tf-vgpu-kernel-count">{kernels.length}</span>)
          </h3>
          {kernels.length === 0 && <p className="tf-vgpu-dim">No kernel holds a vGPU slice.</p>}
          <ul>
            {kernels.map(k => (
              <KernelRow
                key={k.kernel_id}
                kernel={k}
                name={model.names[k.kernel_id] || ''}
                points={state.history[k.kernel_id] || NO_POINTS}
                threshold={settings.warningThreshold}
              />
            ))}
          </ul>
        </section>
      )}
      {settings.showQueue && (
        <section className="tf-vgpu-section tf-vgpu-queue" aria-labelledby="tf-vgpu-queue-h">
          <h3 id="tf-vgpu-queue-h">Waiting to start ({state.queue.length})</h3>
          {state.queue.length === 0 && <p className="tf-vgpu-dim">None of your kernels is waiting.</p>}
          <ul>
            {state.queue.map(e => (
              <QueueRow key={`${e.worker}/${e.id}`} entry={e} now={now} />
            ))}
          </ul>
        </section>
      )}
      {settings.showProfiles && model.profiles.length > 0 && (
        <section className="tf-vgpu-section tf-vgpu-profiles" aria-labelledby="tf-vgpu-profiles-h">
          <h3 id="tf-vgpu-profiles-h">New vGPU notebook</h3>
          <ul>
            {model.profiles.map(p => (
              <ProfileRow key={p.name} model={model} profile={p} onStart={props.onStart} />
            ))}
          </ul>
        </section>
      )}
      {isAdmin(state.pool) && (
        <AdminSection
          admin={state.admin}
          error={state.adminError}
          names={model.names}
          onRelease={props.onRelease ?? (async () => undefined)}
          confirm={props.confirm ?? (async () => false)}
        />
      )}
    </div>
  );
}

