/**
 * What a kernel's chart draws, as plain data (no uPlot here): the last HISTORY_S seconds of VRAM
 * used, the VRAM limit (a line) and utilisation (percent of the whole device), and the theme's
 * colours read from JupyterLab's CSS variables.
 */
import { formatPercent } from './format';
import { HISTORY_S, IHistoryPoint } from './model';

/** uPlot's aligned data: x (unix seconds), VRAM used, VRAM limit (bytes), utilisation (%). */
export type ChartData = [number[], number[], number[], number[]];

export function chartData(points: IHistoryPoint[]): ChartData {
  return [
    points.map(p => p.t),
    points.map(p => p.vramUsed),
    points.map(p => p.vramLimit),
    points.map(p => p.utilization)
  ];
}

/** The x range shown: the HISTORY_S seconds up to the newest point or now, whichever is later. */
export function timeRange(points: IHistoryPoint[], nowSeconds: number): [number, number] {
  const last = points.length ? points[points.length - 1].t : nowSeconds;
  const end = Math.max(last, nowSeconds);
  return [end - HISTORY_S, end];
}

/** The VRAM axis' top: a little above the larger of the limit and the use (never 0). */
export function vramTop(points: IHistoryPoint[]): number {
  let top = 0;
  for (const p of points) {
    top = Math.max(top, p.vramLimit, p.vramUsed);
  }
  return top > 0 ? top * 1.1 : 1;
}

/** The utilisation line next to the chart: "12 % of the GPU · slice 25 %" (one definition, contract 2). */
export function utilizationText(utilization: number, sliceCompute: number | undefined, host: boolean): string {
  const of = host ? 'of the host' : 'of the GPU';
  const slice = sliceCompute === undefined ? '' : ` · slice ${formatPercent(sliceCompute)}`;
  return `${formatPercent(Math.round(utilization))} ${of}${slice}`;
}

/** The one hover that explains utilisation (contract 2). */
export function utilizationHelp(sliceCompute: number | undefined): string {
  const limit =
    sliceCompute === undefined ? '' : ` Your slice may use up to ${formatPercent(sliceCompute)} of it.`;
  return (
    "Utilisation: share of the GPU's time running this kernel's work, of the whole device." + limit
  );
}

export interface IChartColors {
  vram: string;
  limit: string;
  utilization: string;
  axis: string;
  grid: string;
}

/** The chart's colours from JupyterLab's theme variables (read again when the theme changes). */
export function themeColors(style: { getPropertyValue(name: string): string }): IChartColors {
  const v = (name: string, fallback: string) => style.getPropertyValue(name).trim() || fallback;
  return {
    vram: v('--jp-brand-color1', '#1976d2'),
    limit: v('--jp-error-color1', '#d32f2f'),
    utilization: v('--jp-warn-color1', '#f57c00'),
    axis: v('--jp-ui-font-color2', '#616161'),
    grid: v('--jp-border-color2', '#e0e0e0')
  };
}
