import * as React from 'react';
import uPlot from 'uplot';

import { chartData, IChartColors, themeColors, timeRange, utilizationHelp, vramTop } from '../chart';
import { formatBytes, formatPercent } from '../format';
import { HISTORY_S, IHistoryPoint } from '../model';

const HEIGHT = 110;
/** Tick steps of the VRAM axis in binary units (1, 2, 4 … 512 × KiB, MiB, GiB, TiB): "512 MiB", "1 GiB". */
const BINARY_STEPS = [1, 2, 3, 4].flatMap(e => [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].map(m => m * 1024 ** e));
/** Width before the panel has been laid out (hidden): resized once it is. */
const FALLBACK_WIDTH = 280;

/**
 * A counter that changes when JupyterLab's theme does (it sets `data-jp-theme-name` and
 * `data-jp-theme-light` on the body), so charts re-read their colours.
 */
export function useThemeVersion(): number {
  const [version, setVersion] = React.useState(0);
  React.useEffect(() => {
    const observer = new MutationObserver(() => setVersion(v => v + 1));
    observer.observe(document.body, { attributes: true, attributeFilter: ['data-jp-theme-name', 'data-jp-theme-light'] });
    return () => observer.disconnect();
  }, []);
  return version;
}

function options(width: number, colors: IChartColors, points: () => IHistoryPoint[]): uPlot.Options {
  const axis = { stroke: colors.axis, grid: { stroke: colors.grid, width: 1 }, ticks: { stroke: colors.grid, width: 1 } };
  return {
    width,
    height: HEIGHT,
    cursor: { drag: { x: false, y: false } },
    legend: { show: true, live: true },
    scales: {
      x: { time: true, range: () => timeRange(points(), Date.now() / 1000) },
      bytes: { range: () => [0, vramTop(points())] },
      pct: { range: [0, 100] }
    },
    axes: [
      { ...axis, size: 22, space: 60, font: '10px sans-serif' },
      {
        ...axis,
        scale: 'bytes',
        size: 54,
        font: '10px sans-serif',
        incrs: BINARY_STEPS,
        values: (_u, ticks) => ticks.map(t => formatBytes(t))
      },
      {
        ...axis,
        scale: 'pct',
        side: 1,
        size: 40,
        font: '10px sans-serif',
        grid: { show: false },
        values: (_u, ticks) => ticks.map(t => `${t} %`)
      }
    ],
    series: [
      { label: 'time', value: (_u, v) => (v === null || v === undefined ? '–' : new Date(v * 1000).toLocaleTimeString()) },
      {
        label: 'VRAM',
        scale: 'bytes',
        stroke: colors.vram,
        width: 1.5,
        fill: colors.vram + '22',
        value: (_u, v) => (v === null || v === undefined ? '–' : formatBytes(v))
      },
      {
        label: 'limit',
        scale: 'bytes',
        stroke: colors.limit,
        width: 1,
        dash: [4, 3],
        value: (_u, v) => (v === null || v === undefined ? '–' : formatBytes(v))
      },
      {
        label: 'util.',
        scale: 'pct',
        stroke: colors.utilization,
        width: 1,
        value: (_u, v) => (v === null || v === undefined ? '–' : formatPercent(Math.round(v)))
      }
    ]
  };
}

/**
 * A kernel's last 10 minutes with uPlot: VRAM used (filled), its limit (dashed line) and
 * utilisation in percent of the whole device (right axis). Hover shows the values in the legend.
 */
export function KernelChart(props: { points: IHistoryPoint[]; sliceCompute?: number; label: string }): JSX.Element {
  const box = React.useRef<HTMLDivElement>(null);
  const plot = React.useRef<uPlot | null>(null);
  const points = React.useRef(props.points);
  points.current = props.points;
  const theme = useThemeVersion();

  React.useEffect(() => {
    const el = box.current;
    if (!el) {
      return;
    }
    const colors = themeColors(getComputedStyle(el));
    const width = el.clientWidth || FALLBACK_WIDTH;
    // The scales read the newest points through the ref: the plot is made once per theme.
    const u = new uPlot(options(width, colors, () => points.current), chartData(points.current), el);
    plot.current = u;
    const resize = new ResizeObserver(() => {
      const w = el.clientWidth;
      if (w > 0 && w !== u.width) {
        u.setSize({ width: w, height: HEIGHT });
      }
    });
    resize.observe(el);
    return () => {
      resize.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [theme]);

  // Only a chart on screen is redrawn when samples arrive (a panel with a hundred kernels shows a
  // few at a time); one scrolled into view catches up at once.
  const onScreen = React.useRef(true);
  const stale = React.useRef(false);
  React.useEffect(() => {
    const el = box.current;
    if (!el || typeof IntersectionObserver === 'undefined') {
      return;
    }
    const seen = new IntersectionObserver(entries => {
      onScreen.current = entries.some(e => e.isIntersecting);
      if (onScreen.current && stale.current) {
        stale.current = false;
        plot.current?.setData(chartData(points.current));
      }
    });
    seen.observe(el);
    return () => seen.disconnect();
  }, []);

  React.useEffect(() => {
    if (onScreen.current) {
      plot.current?.setData(chartData(props.points));
    } else {
      stale.current = true;
    }
  }, [props.points]);

  const last = props.points[props.points.length - 1];
  const summary = last
    ? `${props.label}, last ${HISTORY_S / 60} minutes: VRAM ${formatBytes(last.vramUsed)} of ${formatBytes(last.vramLimit)}, ` +
      `utilisation ${formatPercent(Math.round(last.utilization))} of the device`
    : `${props.label}: no samples yet`;
  return (
    <div
      className="tf-vgpu-chart"
      data-testid="tf-vgpu-chart"
      data-points={props.points.length}
      ref={box}
      role="img"
      aria-label={summary}
      title={utilizationHelp(props.sliceCompute)}
    />
  );
}
