/** The panel's pure parts: the GPU map's segments, quota meters, waiting words, chart data, profile order. */
import { describe, expect, it } from 'vitest';

import { compareProfiles } from '../availability';
import { chartData, themeColors, timeRange, utilizationHelp, utilizationText, vramTop } from '../chart';
import { deviceSegments, deviceSummary } from '../gpumap';
import { HISTORY_S, IMapDevice, IProfile, IWaiting } from '../model';
import { quotaMeters, reasonText, waitingNotebook, waitingSummary } from '../why';

import { GiB, pool, small } from './fixtures';

const device: IMapDevice = {
  ...pool.workers[0].devices[0],
  kind: 'gpu',
  name: 'A100',
  vram_total: 16 * GiB,
  vram_leased: 12 * GiB,
  compute_leased: 60,
  slices: [
    { vram: 4 * GiB, compute: 10, own: true, kernel_id: 'k1', label: 'train.ipynb', principal: '' },
    { vram: 2 * GiB, compute: 20, own: true, kernel_id: 'k2', label: '', principal: '' },
    { vram: 6 * GiB, compute: 30, own: false, kernel_id: '', label: '', principal: '' }
  ]
};

describe('GPU map', () => {
  it('names own slices, shows others as one anonymous segment and the free space', () => {
    const segments = deviceSegments(device, { k2: 'eval.ipynb' });
    expect(segments.map(s => [s.kind, s.label, s.fraction])).toEqual([
      ['own', 'train.ipynb', 0.25],
      ['own', 'eval.ipynb', 0.125],
      ['other', 'other users', 0.375],
      ['free', 'free', 0.25]
    ]);
    expect(segments[0].kernelId).toBe('k1');
    expect(segments[2].title).toBe('Other users — 6 GiB · 30 % leased');
    expect(segments[3].title).toBe('Free — 4 GiB · 40 %');
    expect(deviceSummary(device, segments)).toBe(
      'GPU 0 A100, 16 GiB: yours train.ipynb 4 GiB; yours eval.ipynb 2 GiB; other users 6 GiB; free 4 GiB'
    );
  });

  it('names the principal of each lease in the admin view and leaves out a full device\'s free part', () => {
    const full: IMapDevice = {
      ...device,
      vram_leased: 16 * GiB,
      slices: [{ vram: 16 * GiB, compute: 100, own: false, kernel_id: '', label: 'x.ipynb', principal: 'bob' }]
    };
    const segments = deviceSegments(full);
    expect(segments.map(s => [s.kind, s.label])).toEqual([['other', 'bob']]);
    expect(segments[0].title).toBe('bob: x.ipynb — 16 GiB · 100 %');
  });

  it('shows an older server\'s leased share (no slices) as one anonymous segment', () => {
    const { slices: _, ...old } = device;
    void _;
    expect(deviceSegments(old).map(s => [s.kind, s.vram])).toEqual([
      ['other', 12 * GiB],
      ['free', 4 * GiB]
    ]);
  });
});

describe('why and how long', () => {
  it('has a meter per dimension with a limit, and says "no limit" for held ones without', () => {
    const worker = {
      ...pool.workers[0],
      quota: {
        vram: { held: 12 * GiB, limit: 16 * GiB },
        compute: { held: 30, limit: null },
        kernels: { held: 2, limit: 4 },
        devices: { held: 0, limit: null },
        source: 'default'
      }
    };
    expect(quotaMeters(worker).map(m => [m.name, m.fraction, m.text])).toEqual([
      ['VRAM', 0.75, '12 GiB of 16 GiB'],
      ['Compute', 0, '30 % (no limit)'],
      ['Kernels', 0.5, '2 of 4']
    ]);
    expect(quotaMeters({ ...worker, quota: null })).toEqual([]);
  });

  it('says why a start waits, which notebook, and for how long', () => {
    const entry: IWaiting = {
      id: 'r1',
      worker: 'w',
      position: 2,
      reason: 'quota',
      message: '',
      qos: 'medium',
      profile: 'small',
      since: 1000,
      labels: {},
      request: { vram: 4 * GiB, compute: 10, count: 1, whole_device: false },
      description: '4 GiB · 10 %',
      notebook: 'big.ipynb',
      hint: 'Ending one of your kernels lets it start.'
    };
    expect(waitingNotebook(entry)).toBe('big.ipynb');
    expect(waitingNotebook({ ...entry, notebook: '', labels: { notebook: 'l.ipynb' } })).toBe('l.ipynb');
    expect(waitingNotebook({ ...entry, notebook: '' })).toBe('a small kernel');
    expect(waitingSummary(entry, 1000 + 185)).toBe('#2 · your quota is used up · waited 3 min');
    expect(reasonText('no_room')).toBe('no room on a GPU now');
    expect(reasonText('behind')).toBe('behind an earlier request');
    expect(reasonText('')).toBe('waiting for room');
  });
});

describe('kernel chart data', () => {
  const points = [
    { t: 100, vramUsed: GiB, vramLimit: 4 * GiB, utilization: 12 },
    { t: 101, vramUsed: 5 * GiB, vramLimit: 4 * GiB, utilization: 30 }
  ];

  it('aligns time, VRAM used, limit and utilisation for uPlot', () => {
    expect(chartData(points)).toEqual([
      [100, 101],
      [GiB, 5 * GiB],
      [4 * GiB, 4 * GiB],
      [12, 30]
    ]);
  });

  it('shows the last 10 minutes up to now or the newest point, and room above limit and use', () => {
    expect(timeRange(points, 90)).toEqual([101 - HISTORY_S, 101]);
    expect(timeRange(points, 500)).toEqual([500 - HISTORY_S, 500]);
    expect(timeRange([], 500)).toEqual([500 - HISTORY_S, 500]);
    expect(vramTop(points)).toBeCloseTo(5.5 * GiB);
    expect(vramTop([])).toBe(1);
  });

  it('tells utilisation one way: of the whole device, the slice as its limit', () => {
    expect(utilizationText(12.4, 25, false)).toBe('12 % of the GPU · slice 25 %');
    expect(utilizationText(3, undefined, true)).toBe('3 % of the host');
    expect(utilizationHelp(25)).toBe(
      "Utilisation: share of the GPU's time running this kernel's work, of the whole device. " +
        'Your slice may use up to 25 % of it.'
    );
  });

  it('takes its colours from the theme variables, with fallbacks', () => {
    const vars: { [k: string]: string } = { '--jp-brand-color1': ' #123456 ' };
    const colors = themeColors({ getPropertyValue: n => vars[n] ?? '' });
    expect(colors.vram).toBe('#123456');
    expect(colors.grid).toBe('#e0e0e0');
  });
});

describe('profiles', () => {
  it('sort small -> large by total size (count x slice), whole devices last', () => {
    const p = (name: string, vram: number, compute: number, whole = false, count = 1): IProfile => ({
      ...small,
      name,
      vram,
      compute,
      whole_device: whole,
      count
    });
    const list = [
      p('large', 16 * GiB, 50),
      p('whole', 0, 100, true),
      p('pair', 10 * GiB, 10, false, 2),
      p('small', 4 * GiB, 10),
      p('small-fast', 4 * GiB, 25)
    ];
    // Two 10 GiB slices (20 GiB in all) come after one of 16 GiB, as in GET profiles.
    expect(list.sort(compareProfiles).map(x => x.name)).toEqual(['small', 'small-fast', 'large', 'pair', 'whole']);
  });
});
