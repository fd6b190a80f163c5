import * as React from 'react';

import { HISTORY_MS, IHistoryPoint } from '../model';

export interface ISparklineProps {
  points: IHistoryPoint[];
  now: number;
  width?: number;
  height?: number;
}

/** Two lines over the last 60 s: VRAM as a fraction of the limit (solid), utilization (dashed). */
export function Sparkline(props: ISparklineProps): JSX.Element {
  const width = props.width ?? 120;
  const height = props.height ?? 24;
  const x = (t: number) => Math.max(0, width - ((props.now - t) / HISTORY_MS) * width);
  const y = (fraction: number) => height - 1 - Math.min(1, Math.max(0, fraction)) * (height - 2);
  const path = (value: (p: IHistoryPoint) => number) =>
    props.points.map((p, i) => `${i ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(value(p)).toFixed(1)}`).join(' ');
  const last = props.points[props.points.length - 1];
  const label = last
    ? `last 60 seconds: VRAM ${Math.round((last.vramLimit ? last.vramUsed / last.vramLimit : 0) * 100)} % of the limit, ` +
      `utilization ${Math.round(last.utilization)} %`
    : 'last 60 seconds: no samples yet';
  return (
    <svg
      className="tf-vgpu-sparkline"
      width={width}
      height={height}
      viewBox={`0 0 ${width} ${height}`}
      role="img"
      aria-label={label}
    >
      <title>{label}</title>
      {props.points.length > 1 && (
        <>
          <path className="tf-vgpu-sparkline-vram" d={path(p => (p.vramLimit ? p.vramUsed / p.vramLimit : 0))} />
          <path className="tf-vgpu-sparkline-util" d={path(p => p.utilization / 100)} />
        </>
      )}
    </svg>
  );
}
