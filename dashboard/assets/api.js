// The admin API, with the token the operator typed in. The token is kept in this tab's
// sessionStorage (gone when the tab closes) and sent as `Authorization: Bearer` on every
// call; it is never written into the page.

const KEY = 'pylon.admin.token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function forget() {
  sessionStorage.removeItem(KEY);
}

// An answer that was not 2xx: its status and the API's own message.
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// Called when the node refuses the token (401), e.g. after it was rotated.
let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

// `GET /api/v1${path}` (or another method with a JSON body): the JSON answer, or an
// ApiError carrying the API's `{"error": ...}` message.
export async function api(path, { method = 'GET', body, signal, tokenOverride } = {}) {
  const headers = { Authorization: `Bearer ${tokenOverride ?? token() ?? ''}` };
  const init = { method, headers, signal, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(`/api/v1${path}`, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, `the node did not answer (${e.message}); is it still running?`);
  }
  let json = null;
  try {
    json = await response.json();
  } catch {
    // Not JSON: the message below says what came.
  }
  if (!response.ok) {
    const message = (json && json.error) || `${response.status} ${response.statusText}`;
    const err = new ApiError(response.status, message);
    if (response.status === 401 && tokenOverride === undefined) onUnauthorized(err);
    throw err;
  }
  if (json === null) throw new ApiError(response.status, 'the answer was not JSON');
  return json;
}
