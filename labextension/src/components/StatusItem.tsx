import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import * as React from 'react';

import { utilizationHelp } from '../chart';
import { isNearLimit, statusText, VgpuModel } from '../model';

/** `vGPU 3.1 / 8.0 GiB · 42 %` for the active notebook's kernel; empty without a slice. */
export class VgpuStatusItem extends ReactWidget {
  constructor(model: VgpuModel, activeKernel: () => string | null, onClick: () => void) {
    super();
    this._model = model;
    this._activeKernel = activeKernel;
    this._onClick = onClick;
    this.addClass('tf-vgpu-status');
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this._model.changed}>
        {() => {
          const id = this._activeKernel();
          const kernel = id ? this._model.state.kernels[id] : undefined;
          const text = statusText(kernel);
          if (!text || !kernel) {
            return <span />;
          }
          const used = kernel.usage?.vram_used ?? 0;
          const limit = kernel.slice?.vram ?? 0;
          const near = isNearLimit(used, limit, this._model.settings.warningThreshold);
          const stale = this._model.state.connection !== 'connected' || this._model.stale();
          const full = `${text}${near ? ' · near limit' : ''}${stale ? ' · not live' : ''}`;
          return (
            <span
              role="button"
              tabIndex={0}
              className={`tf-vgpu-status-text${near ? ' tf-vgpu-near' : ''}`}
              aria-label={`vGPU of this notebook's kernel: ${full}. Open the vGPU panel.`}
              title={`vGPU slice of this notebook's kernel: VRAM used / limit · utilisation. ${utilizationHelp(
                kernel.slice?.compute
              )} Click to open the vGPU panel.`}
              onClick={this._onClick}
              onKeyDown={e => {
                if (e.key === 'Enter' || e.key === ' ') {
                  this._onClick();
                }
              }}
            >
              {full}
            </span>
          );
        }}
      </UseSignal>
    );
  }

  private _model: VgpuModel;
  private _activeKernel: () => string | null;
  private _onClick: () => void;
}
