// Stub for Headlamp's lib/cluster (reads the cluster from the browser URL):
// the cluster under test.
export function getCluster() {
  return globalThis.__harness.cluster ?? null;
}
