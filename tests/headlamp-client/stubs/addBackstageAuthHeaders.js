// Stub for Headlamp's helpers/addBackstageAuthHeaders: not embedded in Backstage.
export function addBackstageAuthHeaders(headers = {}) {
  return headers;
}
