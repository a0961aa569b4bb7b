// Stub for Headlamp's stateless/findKubeconfigByClusterName (IndexedDB):
// no stateless kubeconfigs in the harness.
export function findKubeconfigByClusterName() {
  return Promise.resolve(null);
}
