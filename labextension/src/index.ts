/**
 * tf-jupyter's JupyterLab extension: the "vGPU" sidebar, the status bar item, notifications, and
 * the vGPU kernels' availability on the launcher's cards and in the kernel picker.
 * Wires the model (model.ts), the connection (server.ts) and the views (components/, decorate.ts).
 *
 * Every shell-specific part is optional, so the plugin also loads in Notebook 7 (no status bar,
 * no launcher; its own shell): the status item goes to the top area when there is no status bar,
 * and a part the shell refuses is left out with a console warning, never an error.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { IPoll, Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';

import { VgpuPanel } from './components/Sidebar';
import { KernelListDecorator, kernelViews } from './decorate';
import { launcherOrderPlugin } from './launcherOrderPlugin';
import { VgpuStatusItem } from './components/StatusItem';
import { DEFAULT_SETTINGS, IAlert, isAdmin, ISettings, statusText, VgpuModel } from './model';
import {
  EventsConnection,
  fetchAdmin,
  fetchHistory,
  fetchKernels,
  fetchPool,
  fetchProfiles,
  releaseLease
} from './server';

export const PLUGIN_ID = 'tf-jupyter-vgpu:plugin';
export const PANEL_ID = 'tf-vgpu-panel';
const OPEN_COMMAND = 'tf-vgpu:open-panel';

const vgpuIcon = new LabIcon({
  name: 'tf-jupyter-vgpu:chip',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161"><path d="M7 7h10v10H7z" fill-opacity=".35"/>' +
    '<path d="M9 2h2v3H9zM13 2h2v3h-2zM9 19h2v3H9zM13 19h2v3h-2zM2 9h3v2H2zM2 13h3v2H2zM19 9h3v2h-3zM19 13h3v2h-3z"/>' +
    '<path d="M5 5h14v14H5zm2 2v10h10V7z"/></g></svg>'
});

function readSettings(settings: ISettingRegistry.ISettings | null): ISettings {
  if (!settings) {
    return DEFAULT_SETTINGS;
  }
  const c = settings.composite as Partial<ISettings>;
  return { ...DEFAULT_SETTINGS, ...c };
}

/** How often GET kernels runs: every refreshSeconds, backing off on failure up to a minute. */
function refreshFrequency(settings: ISettings): IPoll.Frequency {
  const interval = Math.max(1, settings.refreshSeconds) * 1000;
  return { interval, backoff: true, max: Math.max(interval, 60_000) };
}

function notify(alert: IAlert): void {
  const options = { autoClose: alert.level === 'error' ? (false as const) : 10_000 };
  const text = alert.message.length > 140 ? alert.message.slice(0, 137) + '…' : alert.message;
  Notification[alert.level](text, options);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Live vGPU pool, kernels and queue of tf-jupyter.',
  autoStart: true,
  optional: [ISettingRegistry, IStatusBar, INotebookTracker, ICommandPalette],
  activate: async (
    app: JupyterFrontEnd,
    registry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    notebooks: INotebookTracker | null,
    palette: ICommandPalette | null
  ) => {
    const model = new VgpuModel();
    let restartRefresh = (): void => undefined;
    let settings: ISettingRegistry.ISettings | null = null;
    if (registry) {
      try {
        settings = await registry.load(PLUGIN_ID);
        model.settings = readSettings(settings);
        settings.changed.connect(() => {
          model.settings = readSettings(settings);
          restartRefresh();
        });
      } catch (err) {
        console.warn('tf-jupyter-vgpu: settings not loaded, using defaults', err);
      }
    }

    const panel = new VgpuPanel(
      model,
      kernelspec => {
        void app.commands.execute('notebook:create-new', { kernelName: kernelspec });
      },
      async (worker, leaseId) => {
        await releaseLease(worker, leaseId);
        void adminPoll.refresh();
        model.requestRefetch();
      }
    );
    fetchProfiles()
      .then(profiles => (model.profiles = profiles))
      .catch(err => console.warn('tf-jupyter-vgpu: GET profiles failed', err));
    panel.id = PANEL_ID;
    panel.title.icon = vgpuIcon;
    panel.title.caption = 'vGPU: pool, my kernels, queue';
    let hasPanel = false;
    try {
      app.shell.add(panel, 'left', { rank: 600 });
      hasPanel = true;
    } catch (err) {
      console.warn('tf-jupyter-vgpu: this shell has no left area; no vGPU panel', err);
    }

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Show the vGPU panel',
      caption: 'Open the vGPU panel: pool, my kernels, queue',
      isEnabled: () => hasPanel,
      execute: () => app.shell.activateById(PANEL_ID)
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'vGPU' });

    // Notebook names for kernel ids, from the session manager.
    const sessions = app.serviceManager.sessions;
    const updateNames = () => {
      const names: { [id: string]: string } = {};
      for (const s of sessions.running()) {
        if (s.kernel) {
          names[s.kernel.id] = s.path || s.name;
        }
      }
      model.names = names;
    };
    sessions.runningChanged.connect(updateNames);
    updateNames();

    // GET kernels every refreshSeconds (and soon after the model asks for it); on failure the
    // poll backs off up to a minute. Skipped while the page is hidden.
    const kernelsPoll = new Poll({
      auto: false,
      name: 'tf-jupyter-vgpu:kernels',
      factory: async () => {
        void sessions.refreshRunning().catch(() => undefined);
        // The kernels and the pool's counts together, so the two agree with the API and each other.
        const [kernels, pool] = await Promise.all([fetchKernels(), fetchPool()]);
        model.setPool(pool);
        model.setKernels(kernels);
      },
      frequency: refreshFrequency(model.settings),
      standby: 'when-hidden'
    });
    kernelsPoll.ticked.connect((_, state) => {
      if (state.phase === 'rejected') {
        console.debug('tf-jupyter-vgpu: GET kernels failed', state.payload);
      }
    });
    restartRefresh = () => {
      kernelsPoll.frequency = refreshFrequency(model.settings);
    };
    void kernelsPoll.start();
    // A new kernel or lease seen in the events: fetch the list soon, once for a burst of them.
    model.refetchRequested.connect(() => {
      void kernelsPoll.schedule({
        cancel: ({ phase }) => phase === 'refreshed',
        interval: 300,
        phase: 'refreshed'
      });
    });
    // Each kernel's last 10 minutes, loaded once; live samples are appended by the model.
    const historyAsked = new Set<string>();
    model.changed.connect(() => {
      for (const id of Object.keys(model.state.kernels)) {
        if (!historyAsked.has(id)) {
          historyAsked.add(id);
          fetchHistory(id)
            .then(history => model.setHistory(history))
            .catch(err => console.debug('tf-jupyter-vgpu: no history for kernel', id, err));
        }
      }
    });

    // The admin view: on open and every few seconds while the panel is visible, for admins only.
    const adminPoll = new Poll({
      auto: false,
      name: 'tf-jupyter-vgpu:admin',
      factory: async () => {
        if (!panel.isVisible || !isAdmin(model.state.pool)) {
          return;
        }
        try {
          model.setAdmin(await fetchAdmin());
        } catch (err) {
          const why = err instanceof Error ? err.message : String(err);
          model.setAdmin(model.state.admin, `The admin view could not be loaded: ${why}.`);
        }
      },
      frequency: { interval: 5000, backoff: false },
      standby: 'when-hidden'
    });
    void adminPoll.start();
    let wasAdmin = false;
    model.changed.connect(() => {
      const admin = isAdmin(model.state.pool);
      if (admin && !wasAdmin && panel.isVisible) {
        void adminPoll.refresh();
      }
      wasAdmin = admin;
    });
    panel.shown.connect(() => {
      if (isAdmin(model.state.pool)) {
        void adminPoll.refresh();
      }
    });

    // Staleness depends on time, not on messages: re-evaluate every second.
    const tickPoll = new Poll({
      auto: false,
      name: 'tf-jupyter-vgpu:tick',
      factory: async () => model.tick(),
      frequency: { interval: 1000, backoff: false },
      standby: 'when-hidden'
    });
    void tickPoll.start();

    model.alerted.connect((_, alert) => {
      if (model.settings.notifications) {
        notify(alert);
      }
    });

    const connection = new EventsConnection(model);
    connection.start();

    // Launcher cards and kernel pickers: slice and "fits now" / "queue: N waiting", live.
    const kernelspecs = app.serviceManager.kernelspecs;
    const decorator = new KernelListDecorator(() =>
      model.settings.kernelListAvailability
        ? kernelViews(kernelspecs.specs?.kernelspecs, model.profiles, model.state.pool, model.live())
        : kernelViews(null, [], null, false)
    );
    const redecorate = () => decorator.schedule();
    model.changed.connect(redecorate);
    kernelspecs.specsChanged.connect(redecorate);
    app.commands.commandExecuted.connect((_, executed) => {
      if (executed.id === 'launcher:create') {
        void executed.result.then(redecorate, () => undefined);
      }
    });
    app.shell.currentChanged?.connect(redecorate);
    void app.restored.then(redecorate);

    const activeKernel = (): string | null => {
      const widget = notebooks?.currentWidget;
      return widget?.sessionContext.session?.kernel?.id ?? null;
    };
    if (statusBar) {
      const item = new VgpuStatusItem(model, activeKernel, () => app.shell.activateById(PANEL_ID));
      const activeChanged = new Signal<unknown, void>(model);
      let wasActive = false;
      const isActive = () => statusText(model.state.kernels[activeKernel() ?? '']) !== null;
      const check = () => {
        const now = isActive();
        if (now !== wasActive) {
          wasActive = now;
          activeChanged.emit();
        }
      };
      model.changed.connect(check);
      notebooks?.currentChanged.connect(() => {
        check();
        item.update();
      });
      statusBar.registerStatusItem(PLUGIN_ID, {
        item,
        align: 'left',
        rank: 4,
        isActive,
        activeStateChanged: activeChanged
      });
    } else if (notebooks) {
      // No status bar (Notebook 7): the same item in the top area, next to the kernel indicator.
      const item = new VgpuStatusItem(model, activeKernel, () => {
        if (hasPanel) {
          app.shell.activateById(PANEL_ID);
        }
      });
      item.id = 'tf-vgpu-top-status';
      item.addClass('tf-vgpu-status-top');
      notebooks.currentChanged.connect(() => item.update());
      try {
        app.shell.add(item, 'top', { rank: 1000 });
      } catch (err) {
        console.warn('tf-jupyter-vgpu: no status bar and no top area; no vGPU status item', err);
      }
    }
  }
};

export default [plugin, launcherOrderPlugin];
