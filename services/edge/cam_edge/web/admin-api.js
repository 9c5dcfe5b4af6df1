// The admin REST API (/api/admin/…, docs/webapp.md "Admin view"), for admins only: the
// server reads the caller's admin flag from the database on every call. Every call goes
// to this page's own origin with the tab's token as a Bearer header (the cookie may be
// another tab's session).

import { ApiError } from './api.js';
import * as store from './store.js';

// The error of a failed admin call: the server's {"error": {code, message, rows?}}.
export class AdminError extends ApiError {
  constructor(code, message, status, rows) {
    super(code, message, status);
    this.serverMessage = message || '';
    this.rows = rows;   // CSV import: [{line, message}]
  }
}

function statusCode(status) {
  if (status === 0 || status >= 500) return 'unavailable';
  if (status === 401) return 'unauthenticated';
  if (status === 403) return 'forbidden';
  if (status === 404) return 'not_found';
  if (status === 429) return 'rate_limited';
  return 'bad_request';
}

async function call(method, path, { query, body } = {}) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null && v !== '') params.set(k, String(v));
  }
  const qs = params.toString();
  const headers = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (store.state.token) headers.authorization = `Bearer ${store.state.token}`;
  let res;
  try {
    res = await fetch(`/api/admin${path}${qs ? `?${qs}` : ''}`, {
      method, headers, body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin', cache: 'no-store',
    });
  } catch (e) {
    throw new AdminError('unavailable', String(e), 0);
  }
  let data = null;
  try { data = await res.json(); } catch { /* not JSON */ }
  if (!res.ok) {
    const err = (data && typeof data === 'object' && data.error) || {};
    throw new AdminError(typeof err.code === 'string' && err.code ? err.code : statusCode(res.status),
      typeof err.message === 'string' ? err.message : '', res.status,
      Array.isArray(err.rows) ? err.rows : undefined);
  }
  return data || {};
}

const id = (v) => encodeURIComponent(String(v));

export const clusterView = () => call('GET', '/cluster');
export const policy = () => call('GET', '/policy');

export const videoServers = () => call('GET', '/video');
export const drainVideo = (name) => call('POST', `/video/${id(name)}/drain`);
export const enableVideo = (name) => call('POST', `/video/${id(name)}/enable`);
export const explainPlacement = (room) => call('GET', '/video/explain', { query: { room } });

export const users = ({ q, after, limit } = {}) => call('GET', '/users', { query: { q, after, limit } });
export const createUser = (user) => call('POST', '/users', { body: user });
export const importUsers = (csv) => call('POST', '/users/import', { body: { csv } });
export const deactivateUser = (user) => call('POST', `/users/${id(user)}/deactivate`);
export const reactivateUser = (user) => call('POST', `/users/${id(user)}/reactivate`);
export const resetPassword = (user, password) => call('POST', `/users/${id(user)}/password`, { body: { password } });
export const setRole = (user, admin) => call('POST', `/users/${id(user)}/role`, { body: { admin } });

export const rooms = ({ q, after, limit } = {}) => call('GET', '/rooms', { query: { q, after, limit } });
export const roomMembers = (room) => call('GET', `/rooms/${id(room)}/members`);
export const removeMember = (room, user) => call('DELETE', `/rooms/${id(room)}/members/${id(user)}`);
export const deleteRoom = (room) => call('DELETE', `/rooms/${id(room)}`);

export const audit = ({ actor, action, before, limit } = {}) => call('GET', '/audit', { query: { actor, action, before, limit } });
