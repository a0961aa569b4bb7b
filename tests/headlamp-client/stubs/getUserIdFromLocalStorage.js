// Stub for Headlamp's stateless/getUserIdFromLocalStorage (the original
// pulls in the whole stateless-kubeconfig module): same key, fixed id.
export function getUserIdFromLocalStorage() {
  let id = localStorage.getItem('headlamp-userId');
  if (!id) {
    id = 'harness-user';
    localStorage.setItem('headlamp-userId', id);
  }
  return id;
}
