// Stub for Headlamp's helpers/getAppUrl: the backend is the harness's relay
// in front of kubemux (set by harness.js before Headlamp's modules load).
export function getAppUrl() {
  return globalThis.__harness.appUrl;
}
