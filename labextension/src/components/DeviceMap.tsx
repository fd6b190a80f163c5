import * as React from 'react';

import { formatBytes } from '../format';
import { deviceSegments, deviceSummary } from '../gpumap';
import { IMapDevice } from '../model';

/**
 * One device as a horizontal bar split into its slices: own named, other users' anonymous (one
 * grey segment), free space; each segment has a hover title; the bar says it all in its label.
 */
export function DeviceMap(props: { device: IMapDevice; names: { [kernelId: string]: string } }): JSX.Element {
  const d = props.device;
  const segments = deviceSegments(d, props.names);
  const summary = deviceSummary(d, segments);
  return (
    <div className="tf-vgpu-device-map" data-testid="tf-vgpu-device-map" data-device-uuid={d.uuid}>
      <div className="tf-vgpu-map-bar" role="img" aria-label={summary} title={summary}>
        {segments.map((s, i) => (
          <div
            key={`${s.kind}-${s.kernelId || s.label}-${i}`}
            className={`tf-vgpu-slice tf-vgpu-slice-${s.kind}`}
            data-testid="tf-vgpu-slice"
            data-own={s.kind === 'own' ? 'true' : 'false'}
            data-kind={s.kind}
            data-kernel-id={s.kernelId || undefined}
            style={{ flexGrow: s.fraction, flexBasis: 0 }}
            title={s.title}
          >
            {s.kind === 'own' && s.fraction >= 0.15 && (
              <span className="tf-vgpu-slice-label" aria-hidden="true">
                {s.label}
              </span>
            )}
          </div>
        ))}
      </div>
      <div className="tf-vgpu-map-legend tf-vgpu-dim" aria-hidden="true">
        {segments.map((s, i) => (
          <span key={i} className="tf-vgpu-ellipsis" title={s.title}>
            <span className={`tf-vgpu-swatch tf-vgpu-slice-${s.kind}`} /> {s.label} {formatBytes(s.vram)}
          </span>
        ))}
      </div>
    </div>
  );
}
