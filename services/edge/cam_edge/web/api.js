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

// The session's user -> {user, admin}.
export function me(token) {
  return call('GET', '/api/me', { token });
}

// -> {node, hosts, own_host, load_balancer, server_url_domain, protocol, ...}
export function cluster() {
  return call('GET', '/api/cluster');
}

// ---- files (attachments) ----------------------------------------------------------

// The error of a failed file call: the server's {"error": {code, message}}, else a
// code from the status alone (a proxy's answer, or no answer at all).
function statusCode(status) {
  if (status === 0) return 'unavailable';
  if (status === 401) return 'unauthenticated';
  if (status === 403) return 'forbidden';
  if (status === 404) return 'not_found';
  if (status === 413) return 'file_too_large';
  if (status === 429) return 'quota_exceeded';
  if (status >= 500) return 'unavailable';
  return 'bad_request';
}

function fileError(status, data, retryAfter) {
  const err = (data && typeof data === 'object' && data.error) || {};
  return new ApiError(typeof err.code === 'string' && err.code ? err.code : statusCode(status),
    typeof err.message === 'string' ? err.message : '', status, Number(retryAfter) || undefined);
}

// POST /api/rooms/{room}/files?cid=… (multipart, one part `file`), through
// XMLHttpRequest for its upload progress. base: the origin ('' = this page's).
// -> {promise (resolves {file, message}), abort()}; onProgress(loaded, total).
export function uploadFile({ base = '', token, room, cid, file, onProgress }) {
  const xhr = new XMLHttpRequest();
  const promise = new Promise((resolve, reject) => {
    const url = `${base}/api/rooms/${encodeURIComponent(room)}/files${cid ? `?cid=${encodeURIComponent(cid)}` : ''}`;
    xhr.open('POST', url);
    if (token) xhr.setRequestHeader('authorization', `Bearer ${token}`);
    xhr.responseType = 'text';
    xhr.upload.onprogress = (ev) => {
      if (onProgress) onProgress(ev.loaded, ev.lengthComputable ? ev.total : file.size);
    };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300 && data) resolve(data);
      else reject(fileError(xhr.status, data, xhr.getResponseHeader('retry-after')));
    };
    xhr.onerror = () => reject(new ApiError('unavailable', '', 0));
    xhr.onabort = () => reject(new ApiError('aborted', '', 0));
    const form = new FormData();
    form.append('file', file, file.name || 'file');
    xhr.send(form);
  });
  return { promise, abort: () => xhr.abort() };
}

// GET /api/files/{id}, /thumb or /preview -> a Blob. variant: '' | 'thumb' | 'preview'.
export async function fileBlob({ base = '', token, id, variant = '', signal }) {
  const url = `${base}/api/files/${encodeURIComponent(id)}${variant ? `/${variant}` : ''}`;
  const headers = token ? { authorization: `Bearer ${token}` } : {};
  let res;
  try {
    res = await fetch(url, { headers, credentials: 'same-origin', signal });
  } catch (e) {
    if (e && e.name === 'AbortError') throw new ApiError('aborted', '', 0);
    throw new ApiError('unavailable', String(e), 0);
  }
  if (!res.ok) {
    let data = null;
    try { data = await res.json(); } catch { /* not JSON */ }
    throw fileError(res.status, data, res.headers.get('retry-after'));
  }
  return res.blob();
}
