import * as React from 'react';

import { formatBytes, formatDuration, formatPercent } from '../format';
import { IAdminView } from '../model';
import { reasonText } from '../why';
import { DeviceMap } from './DeviceMap';

type Idle = IAdminView['idle'][number];

/**
 * The admin section (only for admin principals): per-user use, idle kernels holding VRAM with a
 * Release action (confirmed), the queue of all users, every worker and device.
 */
export function AdminSection(props: {
  admin: IAdminView | null;
  error: string;
  names: { [kernelId: string]: string };
  onRelease: (worker: string, leaseId: string) => Promise<void>;
  confirm: (title: string, body: string, action: string) => Promise<boolean>;
}): JSX.Element {
  const { admin } = props;
  const [releaseError, setReleaseError] = React.useState('');
  const [busy, setBusy] = React.useState('');
  const release = async (idle: Idle) => {
    const what = `${idle.label || 'a kernel'} of ${idle.principal || 'an unknown user'}`;
    const go = await props.confirm(
      'Release this slice?',
      `${what} holds ${formatBytes(idle.vram)} and has been idle for ${formatDuration(idle.idle_s)}. ` +
        'Releasing ends its kernel; its variables are lost.',
      'Release'
    );
    if (!go) {
      return;
    }
    setBusy(idle.lease_id);
    setReleaseError('');
    try {
      await props.onRelease(idle.worker, idle.lease_id);
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      setReleaseError(`Could not release ${what}: ${why}. Reload the admin view and try again.`);
    } finally {
      setBusy('');
    }
  };
  return (
    <section className="tf-vgpu-section tf-vgpu-admin" data-testid="tf-vgpu-admin" aria-labelledby="tf-vgpu-admin-h">
      <h3 id="tf-vgpu-admin-h">Admin: all users</h3>
      {props.error && (
        <p className="tf-vgpu-error" role="alert">
          {props.error}
        </p>
      )}
      {releaseError && (
        <p className="tf-vgpu-error" role="alert">
          {releaseError}
        </p>
      )}
      {!admin && !props.error && <p className="tf-vgpu-dim">Loading the admin view…</p>}
      {admin && (
        <>
          <h4>Use per user</h4>
          {admin.users.length === 0 ? (
            <p className="tf-vgpu-dim">Nobody holds a slice.</p>
          ) : (
            <table className="tf-vgpu-table tf-vgpu-users">
              <thead>
                <tr>
                  <th scope="col">User</th>
                  <th scope="col">VRAM</th>
                  <th scope="col">Comp.</th>
                  <th scope="col">Kern.</th>
                </tr>
              </thead>
              <tbody>
                {admin.users.map(u => (
                  <tr key={u.principal}>
                    <th scope="row" className="tf-vgpu-ellipsis" title={u.principal}>
                      {u.principal}
                    </th>
                    <td>{formatBytes(u.vram)}</td>
                    <td>{formatPercent(u.compute)}</td>
                    <td>{u.kernels}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          <h4>Idle kernels holding VRAM</h4>
          {admin.idle.length === 0 ? (
            <p className="tf-vgpu-dim">No kernel has been idle for a minute.</p>
          ) : (
            <ul>
              {admin.idle.map(i => (
                <li key={`${i.worker}/${i.lease_id}`} className="tf-vgpu-idle" data-lease-id={i.lease_id}>
                  <div className="tf-vgpu-ellipsis" title={`${i.principal}: ${i.label} on ${i.worker}`}>
                    <strong>{i.principal}</strong> · {i.label || i.lease_id.slice(0, 8)}
                  </div>
                  <div className="tf-vgpu-row">
                    <span className="tf-vgpu-dim">
                      {formatBytes(i.vram)} · idle {formatDuration(i.idle_s)}
                      {i.release_for ? ` · to be released: a waiting ${i.release_for} request needs its room` : ''}
                    </span>
                    <button
                      className="jp-mod-styled jp-mod-warn tf-vgpu-release"
                      data-testid="tf-vgpu-idle-release"
                      disabled={busy === i.lease_id}
                      aria-label={`Release the slice of ${i.label || 'a kernel'} of ${i.principal}`}
                      onClick={() => void release(i)}
                    >
                      Release
                    </button>
                  </div>
                </li>
              ))}
            </ul>
          )}
          <h4>Queue of all users ({admin.queue.length})</h4>
          {admin.queue.length === 0 ? (
            <p className="tf-vgpu-dim">Nobody is waiting.</p>
          ) : (
            <ul>
              {admin.queue.map(q => (
                <li key={`${q.worker}/${q.id}`} className="tf-vgpu-ellipsis" title={q.message}>
                  #{q.position} {q.principal} · {formatBytes(q.request.vram)} · {reasonText(q.reason)} ·{' '}
                  {formatDuration(Date.now() / 1000 - q.since)}
                </li>
              ))}
            </ul>
          )}
          <h4>Workers and devices</h4>
          <ul>
            {admin.workers.map(w => (
              <li key={w.address} className="tf-vgpu-admin-worker">
                <div className="tf-vgpu-ellipsis" title={w.error || w.address}>
                  {w.up ? 'up' : 'down'} · {w.address}
                </div>
                {w.devices.map(d => (
                  <DeviceMap key={d.uuid} device={d} names={props.names} />
                ))}
              </li>
            ))}
          </ul>
        </>
      )}
    </section>
  );
}
