/** The plugin of launcherOrder.ts (kept apart so that module imports no JupyterLab runtime). */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ILauncher } from '@jupyterlab/launcher';
import { Signal } from '@lumino/signaling';

import { KernelSelectOrder, orderLauncher, sizeRank } from './launcherOrder';

/** The plugin: launcher items and kernel pickers, small -> large. */
export const launcherOrderPlugin: JupyterFrontEndPlugin<void> = {
  id: 'tf-jupyter-vgpu:launcher-order',
  description: 'Lists vGPU kernels from small to large in the launcher and the kernel picker.',
  autoStart: true,
  optional: [ILauncher],
  activate: (app: JupyterFrontEnd, launcher: ILauncher | null) => {
    const specs = app.serviceManager.kernelspecs;
    new KernelSelectOrder(name => sizeRank(specs.specs?.kernelspecs[name]?.metadata));
    const model = launcher as ILauncher.IModel | null;
    if (!model || typeof model.items !== 'function' || !model.stateChanged) {
      return;
    }
    // Ranks set while the model's signal is delivered are seen by the render it schedules; items
    // added before this plugin started are ranked now and a launcher already open is re-rendered.
    model.stateChanged.connect(() => orderLauncher(model));
    if (orderLauncher(model) && model.stateChanged instanceof Signal) {
      model.stateChanged.emit(undefined);
    }
  }
};
