import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import { ISignal, Signal } from '@lumino/signaling';
import * as React from 'react';

import { VgpuModel } from '../model';
import { VgpuView } from './View';

export { RENDERED_MARK, VgpuView } from './View';

/** A JupyterLab dialog: Cancel or `action` (a warning button). */
async function confirmDialog(title: string, body: string, action: string): Promise<boolean> {
  const answer = await showDialog({
    title,
    body,
    buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: action })]
  });
  return answer.button.accept;
}

/** The left sidebar panel "vGPU". */
export class VgpuPanel extends ReactWidget {
  constructor(
    model: VgpuModel,
    onStart?: (kernelspec: string) => void,
    onRelease?: (worker: string, leaseId: string) => Promise<void>
  ) {
    super();
    this._model = model;
    this._onStart = onStart;
    this._onRelease = onRelease;
    this.addClass('tf-vgpu-panel');
  }

  /** Emitted each time the panel is shown (opened in the sidebar). */
  get shown(): ISignal<this, void> {
    return this._shown;
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this._shown.emit();
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this._model.changed}>
        {() => (
          <VgpuView model={this._model} onStart={this._onStart} onRelease={this._onRelease} confirm={confirmDialog} />
        )}
      </UseSignal>
    );
  }

  private _model: VgpuModel;
  private _onStart?: (kernelspec: string) => void;
  private _onRelease?: (worker: string, leaseId: string) => Promise<void>;
  private _shown = new Signal<this, void>(this);
}
