// REST calls: login, logout, guest sessions, cluster facts (docs/protocol.md, "REST endpoints").

export class ApiError extends Error {
  constructor(code, message, status, retryAfter) {
    super(message || code);
    this.code = code;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function call(method, url, { body, token } = {}) {
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(url, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin', cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError('unavailable', String(e), 0);
  }
  let data = null;
  try { data = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    const err = (data && data.error) || {};
    const retry = Number(res.headers.get('retry-after')) || undefined;
    throw new ApiError(err.code || (res.status >= 500 ? 'unavailable' : 'bad_request'),
      err.message, res.status, retry);
  }
  return data;
}

// -> {token, user}
export function login(username, password) {
  return call('POST', '/api/login', { body: { username, password } });
}

// base: the origin to send it to ('' = this page's); the token names the session.
export function logout(token, base = '') {
  return call('POST', `${base}/api/logout`, { token });
}

// A guest's name for a meeting link -> {token, user, room: {id, name}, expires_at}
export function guest(token, name) {
  return call('POST', '/api/guest', { body: { token, name } });
}

// -> {node, hosts, own_host, load_balancer, server_url_domain, protocol, ...}
export function cluster() {
  return call('GET', '/api/cluster');
}
