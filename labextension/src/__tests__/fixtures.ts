/** Shared test data: a pool, a profile and its kernelspec as tf_jupyter writes it. */
import { IPool, IProfile } from '../model';

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;

/** One up worker, one 8 GiB device with 4 GiB and 10 % leased. */
export const pool: IPool = {
  policy: 'binpack',
  queue_length: 0,
  admin: false,
  workers: [
    {
      address: '127.0.0.1:5000',
      up: true,
      error: '',
      worker_id: 'w1',
      version: '0.1.0',
      backend: 'host',
      leases: 1,
      view: 'own',
      viewer: 'alice',
      quota: {
        vram: { held: 4 * GiB, limit: null },
        compute: { held: 10, limit: null },
        kernels: { held: 1, limit: null },
        devices: { held: 0, limit: null },
        source: ''
      },
      devices: [
        {
          uuid: 'host-0',
          name: 'host device',
          index: 0,
          kind: 'host',
          vram_total: 8 * GiB,
          vram_leased: 4 * GiB,
          vram_used: GiB,
          compute_capacity: 100,
          compute_leased: 10,
          utilization: 3,
          modes: ['host'],
          memory_enforcement: 'watchdog'
        }
      ]
    }
  ]
};

export const small: IProfile = {
  name: 'small',
  vram: 4 * GiB,
  compute: 10,
  count: 1,
  qos: 'medium',
  whole_device: false,
  description: 'Small slice',
  kernelspec: 'vgpu-small',
  display_name: 'Python 3 · vGPU 4 GiB · 10 %'
};

/** The kernelspec as tf_jupyter.profiles writes it (kernels/vgpu-small/kernel.json). */
export function specOf(p: IProfile, displayName = p.display_name) {
  return {
    name: p.kernelspec,
    display_name: displayName,
    language: 'python',
    metadata: {
      kernel_provisioner: { provisioner_name: 'tf-vgpu', config: { profile: p.name } },
      tf_vgpu: {
        name: p.name,
        vram: p.vram,
        compute: p.compute,
        count: p.count,
        qos: p.qos,
        whole_device: p.whole_device,
        description: p.description
      }
    }
  };
}
