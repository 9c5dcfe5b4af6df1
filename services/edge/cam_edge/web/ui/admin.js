// The admin view (admins only; the server checks the flag on every call): tabs for the
// cluster, the video servers, users, rooms and the audit log, over the admin REST API
// (admin-api.js). Everything the server or a user supplied is rendered as text.

import { html, useEffect, useRef, useState } from '../lib.js';
import { errorText, getLang, t } from '../i18n.js';
import * as admin from '../admin-api.js';
import * as store from '../store.js';
import { ConferenceView } from './conference.js';

const TABS = ['cluster', 'video', 'users', 'rooms', 'audit'];
const POLL_EVERY = 2000;     // ms between refreshes of the cluster and video tabs
const SEARCH_DELAY = 250;    // ms after the last keystroke before a search is sent
const PAGE = 50;
export const AUDIT_ACTIONS = [
  'create_user', 'import_users', 'deactivate_user', 'reactivate_user', 'reset_password',
  'grant_admin', 'revoke_admin', 'remove_member', 'delete_room', 'delete_message',
  'revoke_sessions', 'drain_video', 'enable_video',
];

// ---- small pieces ------------------------------------------------------------------

const locale = () => (getLang() === 'ja' ? 'ja-JP' : 'en');
const dash = '—';

function num(n) {
  return typeof n === 'number' && Number.isFinite(n) ? new Intl.NumberFormat(locale()).format(n) : dash;
}

// Seconds as people read them: 0.8 s, 12 s, 4 min, 3 h, 2 d.
function ageText(seconds) {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds)) return dash;
  const s = Math.max(0, seconds);
  if (s < 10) return t('admin.age.s', { n: s.toFixed(1) });
  if (s < 120) return t('admin.age.s', { n: Math.round(s) });
  if (s < 7200) return t('admin.age.min', { n: Math.round(s / 60) });
  if (s < 172800) return t('admin.age.h', { n: Math.round(s / 3600) });
  return t('admin.age.d', { n: Math.round(s / 86400) });
}

function bytesText(n) {
  if (typeof n !== 'number' || !Number.isFinite(n)) return dash;
  let v = Math.max(0, n);
  const units = ['size.b', 'size.kb', 'size.mb', 'size.gb', 'size.tb'];
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return t(units[i], { n: new Intl.NumberFormat(locale(), { maximumFractionDigits: i ? 1 : 0 }).format(v) });
}

function dateText(iso) {
  if (!iso) return dash;
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(locale(), { dateStyle: 'medium', timeStyle: 'medium' });
}

function Time({ iso }) {
  const d = iso ? new Date(iso) : null;
  if (!d || Number.isNaN(d.getTime())) return html`<span>${iso ? String(iso) : dash}</span>`;
  return html`<time datetime=${d.toISOString()}>${dateText(iso)}</time>`;
}

// A value of the server's free-form objects (load, detail) as one line of text.
function plain(value) {
  if (value == null) return '';
  if (typeof value === 'object') {
    if (Array.isArray(value)) return value.map(plain).join(', ');
    return Object.entries(value).map(([k, v]) => {
      const flat = Array.isArray(v) && v.every((x) => x === null || typeof x !== 'object');
      const text = flat ? v.join(' ') : typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v);
      return `${k}: ${text}`;
    }).join(', ');
  }
  return String(value);
}

// An error of the admin API as a line of text: the app's words for the code, and the
// server's own message (which names the offending field, user or row).
export function adminErrorText(e) {
  const code = e && e.code;
  const own = `admin.err.${code}`;
  const text = code && t(own) !== own ? t(own) : errorText(code);
  const message = e && e.serverMessage;
  return message && message !== text ? t('admin.error', { text, message }) : text;
}

function ErrorLine({ error, testid = 'admin-error' }) {
  if (!error) return null;
  return html`<p class="error" data-testid=${testid} role="alert">${adminErrorText(error)}</p>`;
}

function Tag({ kind, children, testid }) {
  return html`<span class=${`tag tag-${kind}`} data-testid=${testid}>${children}</span>`;
}

function YesNo({ ok, yes, no }) {
  return html`<${Tag} kind=${ok ? 'ok' : 'bad'}>${ok ? yes : no}<//>`;
}

// Calls fetcher now and every `every` ms while this component is mounted and the
// browser tab is visible (a hidden tab stops; it starts again when shown). One call at
// a time. -> [{data, error, at}, refresh]
function usePoll(fetcher, every) {
  const [res, setRes] = useState({ data: null, error: null, at: 0 });
  const refresh = useRef(() => {});
  useEffect(() => {
    let timer = null;
    let running = false;
    let again = false;
    let stopped = false;
    const visible = () => document.visibilityState === 'visible';
    const tick = async () => {
      timer = null;
      if (stopped || !visible()) return;
      running = true;
      try {
        const data = await fetcher();
        if (!stopped) setRes({ data, error: null, at: Date.now() });
      } catch (e) {
        if (!stopped) setRes((r) => ({ ...r, error: e }));
      } finally {
        running = false;
      }
      if (stopped) return;
      if (again) { again = false; tick(); } else if (visible()) timer = setTimeout(tick, every);
    };
    refresh.current = () => {
      if (running) { again = true; return; }
      if (timer) clearTimeout(timer);
      tick();
    };
    const onVisibility = () => {
      if (!visible()) { if (timer) clearTimeout(timer); timer = null; } else if (!running && !timer) tick();
    };
    document.addEventListener('visibilitychange', onVisibility);
    tick();
    return () => {
      stopped = true;
      if (timer) clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisibility);
    };
  }, []);
  return [res, () => refresh.current()];
}

function Updated({ at }) {
  if (!at) return html`<span class="muted" data-testid="admin-updated">${t('admin.loading')}</span>`;
  return html`<span class="muted" data-testid="admin-updated" data-at=${at}>
    ${t('admin.updated', { time: new Date(at).toLocaleTimeString(locale()) })}</span>`;
}

// A list fetched page by page (`next` names the next page), restarted when `key` changes.
function usePaged(fetchPage, key) {
  const [items, setItems] = useState([]);
  const [next, setNext] = useState(null);
  const [loading, setLoading] = useState(false);
  const [error, setError] = useState(null);
  const asked = useRef(0);
  const load = async (from) => {
    const n = ++asked.current;
    setLoading(true);
    setError(null);
    try {
      const page = await fetchPage(from);
      if (n !== asked.current) return;
      setItems((old) => (from == null ? page.items : [...old, ...page.items]));
      setNext(page.next ?? null);
    } catch (e) {
      if (n === asked.current) setError(e);
    } finally {
      if (n === asked.current) setLoading(false);
    }
  };
  useEffect(() => {
    const timer = setTimeout(() => load(null), key.delay || 0);
    return () => clearTimeout(timer);
  }, [key.value]);
  const replace = (match, item) => setItems((old) => old.map((x) => (match(x) ? item : x)));
  const remove = (match) => setItems((old) => old.filter((x) => !match(x)));
  return { items, next, loading, error, more: () => load(next), reload: () => load(null), replace, remove };
}

// ---- Cluster -----------------------------------------------------------------------

// A database server's replication: the primary's slots (the standby's, the WAL
// archive's) with their lag; a standby's sync state and replay lag when given.
function replication(d) {
  const parts = [];
  for (const s of Array.isArray(d.slots) ? d.slots : []) {
    parts.push(t(s.active ? 'admin.db.slot' : 'admin.db.slot_idle', { name: String(s.name ?? ''), lag: bytesText(s.lag_bytes) }));
  }
  if (d.sync_state != null) parts.push(t('admin.db.sync', { state: String(d.sync_state) }));
  if (typeof d.replay_lag_bytes === 'number') parts.push(t('admin.db.lag', { lag: bytesText(d.replay_lag_bytes) }));
  return parts.length ? parts.join(' · ') : dash;
}

function ClusterTab() {
  const [{ data, error, at }] = usePoll(admin.clusterView, POLL_EVERY);
  const nodes = (data && data.nodes) || [];
  const processes = (data && data.processes) || [];
  const nats = (data && data.nats) || [];
  const database = (data && data.database) || [];
  const backups = data && data.backups;
  const natsNames = nats.some((s) => s.name);
  return html`
    <div class="admin-section" data-testid="admin-cluster">
      <div class="row admin-toolbar">
        ${data && data.description && html`<p class="admin-desc" data-testid="admin-cluster-desc">${String(data.description)}</p>`}
        <span class="grow"></span>
        <${Updated} at=${at} />
      </div>
      <${ErrorLine} error=${error} />
      <h3>${t('admin.cluster.nodes')}</h3>
      <table class="admin-table">
        <thead><tr>
          <th>${t('admin.col.node')}</th><th>${t('admin.col.address')}</th><th>${t('admin.col.description')}</th>
          <th>${t('admin.col.health')}</th><th>${t('admin.col.heartbeat')}</th>
          <th class="num">${t('admin.col.connections')}</th><th class="num">${t('admin.col.rooms')}</th>
        </tr></thead>
        <tbody>
          ${nodes.map((n) => html`
            <tr key=${n.name} data-testid="admin-node" data-node=${String(n.name ?? '')} data-alive=${n.alive ? 'true' : 'false'}>
              <td class="strong">${String(n.name ?? '')}</td>
              <td>${String(n.address ?? '')}</td>
              <td data-testid="admin-node-desc">${String(n.description ?? '')}</td>
              <td><${YesNo} ok=${!!n.alive} yes=${t('admin.alive')} no=${t('admin.down')} /></td>
              <td>${ageText(n.heartbeat_age)}</td>
              <td class="num">${num(n.connections)}</td>
              <td class="num">${num(n.rooms)}</td>
            </tr>`)}
        </tbody>
      </table>
      <h3>${t('admin.cluster.processes')}</h3>
      <table class="admin-table">
        <thead><tr>
          <th>${t('admin.col.kind')}</th><th>${t('admin.col.instance')}</th><th>${t('admin.col.node')}</th>
          <th class="num">${t('admin.col.pid')}</th><th>${t('admin.col.heartbeat')}</th>
          <th>${t('admin.col.state')}</th><th>${t('admin.col.load')}</th>
        </tr></thead>
        <tbody>
          ${processes.map((p) => html`
            <tr key=${`${p.kind}/${p.instance}`} data-testid="admin-process" data-kind=${String(p.kind ?? '')}
              data-node=${String(p.node ?? '')} data-alive=${p.alive ? 'true' : 'false'}>
              <td class="strong">${String(p.kind ?? '')}</td>
              <td>${String(p.instance ?? '')}</td>
              <td>${String(p.node ?? '')}</td>
              <td class="num">${p.pid == null ? dash : String(p.pid)}</td>
              <td>${ageText(p.heartbeat_age)}</td>
              <td><${YesNo} ok=${!!p.alive} yes=${t('admin.alive')} no=${t('admin.down')} /></td>
              <td class="muted small">${plain(p.load)}</td>
            </tr>`)}
        </tbody>
      </table>
      <div class="admin-columns">
        <div>
          <h3>${t('admin.cluster.nats')}</h3>
          <table class="admin-table">
            <thead><tr><th>${t('admin.col.url')}</th>${natsNames && html`<th>${t('admin.col.name')}</th>`}
              <th class="num">${t('admin.col.clients')}</th><th>${t('admin.col.state')}</th></tr></thead>
            <tbody>
              ${nats.map((s) => html`
                <tr key=${s.url} data-testid="admin-nats" data-up=${s.up ? 'true' : 'false'}>
                  <td>${String(s.url ?? '')}</td>${natsNames && html`<td>${String(s.name ?? '')}</td>`}
                  <td class="num">${num(s.clients)}</td>
                  <td><${YesNo} ok=${!!s.up} yes=${t('admin.up')} no=${t('admin.down')} /></td>
                </tr>`)}
            </tbody>
          </table>
        </div>
        <div>
          <h3>${t('admin.cluster.database')}</h3>
          <table class="admin-table">
            <thead><tr><th>${t('admin.col.host')}</th><th>${t('admin.col.role')}</th>
              <th>${t('admin.col.replication')}</th></tr></thead>
            <tbody>
              ${database.map((d) => html`
                <tr key=${`${d.host}:${d.port}`} data-testid="admin-db" data-role=${String(d.role ?? '')}>
                  <td>${String(d.host ?? '')}:${String(d.port ?? '')}</td>
                  <td><${Tag} kind=${d.role === 'primary' ? 'ok' : d.role === 'standby' ? 'info' : 'bad'}>
                    ${t(`admin.db.${['primary', 'standby'].includes(d.role) ? d.role : 'unreachable'}`)}<//></td>
                  <td class="small">${replication(d)}</td>
                </tr>`)}
            </tbody>
          </table>
        </div>
      </div>
      <h3>${t('admin.cluster.backups')}</h3>
      ${backups ? html`
        <div class="admin-card" data-testid="admin-backups" data-ok=${backups.ok ? 'true' : 'false'}>
          <div class="row wrap">
            <${YesNo} ok=${!!backups.ok} yes=${t('admin.backups.ok')} no=${t('admin.backups.bad')} />
            <span>${backups.age == null ? t('admin.backups.no_age') : t('admin.backups.age', { age: ageText(backups.age) })}</span>
            ${backups.wal_lag_bytes != null && html`<span>${t('admin.backups.wal', { size: bytesText(backups.wal_lag_bytes) })}</span>`}
            ${backups.node && html`<span class="muted">${t('admin.backups.node', { node: String(backups.node) })}</span>`}
          </div>
          ${(backups.warnings || []).length > 0 && html`
            <ul class="admin-warnings">
              ${backups.warnings.map((w, i) => html`<li key=${i} data-testid="admin-backup-warning">${String(w)}</li>`)}
            </ul>`}
        </div>` : data && html`<p class="muted">${dash}</p>`}
    </div>`;
}

// ---- Video servers -----------------------------------------------------------------

function Explain() {
  const [room, setRoom] = useState('');
  const [result, setResult] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const submit = async (ev) => {
    ev.preventDefault();
    const id = Number(room);
    if (!Number.isInteger(id) || id <= 0 || busy) return;
    setBusy(true);
    setError(null);
    setResult(null);
    try { setResult(await admin.explainPlacement(id)); } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const ex = (result && result.explanation) || {};
  const steps = Array.isArray(ex.steps) ? ex.steps : [];
  const known = new Set(['steps', 'server', 'load', 'overflow', 'policy']);
  const rest = Object.entries(ex).filter(([k]) => !known.has(k));
  return html`
    <section class="admin-card">
      <h3>${t('admin.video.explain')}</h3>
      <form class="row wrap" onSubmit=${submit}>
        <label class="inline-field">
          <span class="sr-only">${t('admin.video.explain_room')}</span>
          <input type="number" min="1" step="1" data-testid="admin-explain-room" value=${room}
            placeholder=${t('admin.video.explain_room')} aria-label=${t('admin.video.explain_room')}
            onInput=${(e) => setRoom(e.currentTarget.value)} />
        </label>
        <button type="submit" data-testid="admin-explain-submit" disabled=${busy || !room}>${t('admin.video.explain_go')}</button>
      </form>
      <${ErrorLine} error=${error} testid="admin-explain-error" />
      ${result && html`
        <div data-testid="admin-explain-result" data-server=${String(result.server ?? '')}>
          <p>${t('admin.video.explain_head', { room: String(result.room ?? room), server: String(result.server ?? dash),
            load: String(result.placed_load ?? dash), moves: String(result.moves ?? 0) })}
            ${result.overflow ? ` ${t('admin.video.overflow')}` : ''}
            ${ex.policy ? ` ${t('admin.video.policy', { policy: String(ex.policy) })}` : ''}</p>
          <ol class="admin-steps">
            ${steps.map((s, i) => html`<li key=${i} data-testid="admin-explain-step">${String(s)}</li>`)}
          </ol>
          ${rest.length > 0 && html`<p class="muted small">${plain(Object.fromEntries(rest))}</p>`}
        </div>`}
    </section>`;
}

function VideoServer({ server, onChanged }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const draining = server.state === 'draining';
  const act = async (fn) => {
    setBusy(true);
    setError(null);
    try { await fn(server.name); onChanged(); } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const capacity = Number(server.capacity) || 0;
  const load = Number(server.load) || 0;
  // The conferences on it: a list of {room, participants} (`rooms`, or `conferences`
  // itself), else only their number.
  const confs = Array.isArray(server.conferences) ? server.conferences
    : Array.isArray(server.rooms) ? server.rooms : server.conferences;
  const pct = capacity ? Math.round((100 * load) / capacity) : 0;
  return html`
    <li class=${`admin-card video-server${draining ? ' is-draining' : ''}`} data-testid="admin-video-server"
      data-server=${String(server.name ?? '')} data-state=${String(server.state ?? '')}
      data-healthy=${server.healthy ? 'true' : 'false'}>
      <div class="row wrap">
        <strong class="video-name">${String(server.name ?? '')}</strong>
        ${draining && html`<${Tag} kind="warn" testid="admin-video-draining">${t('admin.video.draining')}<//>`}
        <${YesNo} ok=${!!server.healthy} yes=${t('admin.video.healthy')} no=${t('admin.video.unhealthy')} />
        <span class="grow"></span>
        ${draining
          ? html`<button type="button" data-testid="admin-video-enable" disabled=${busy}
              onClick=${() => act(admin.enableVideo)}>${t('admin.video.enable')}</button>`
          : html`<button type="button" class="danger" data-testid="admin-video-drain" disabled=${busy}
              onClick=${() => act(admin.drainVideo)}>${t('admin.video.drain')}</button>`}
      </div>
      <div class="row">
        <meter class="video-meter" min="0" max=${Math.max(capacity, 1)} high=${Math.max(capacity, 1) * 0.8}
          optimum="0" value=${load} aria-label=${t('admin.video.load')}></meter>
        <span data-testid="admin-video-load" data-load=${load} data-capacity=${capacity}>
          ${t('admin.video.load_of', { load: num(load), capacity: num(capacity), pct })}</span>
      </div>
      ${Array.isArray(confs) ? html`
        <ul class="admin-chips">
          ${confs.map((c) => html`<li key=${c.room} data-testid="admin-video-conference" data-room=${c.room}>
            ${t('admin.video.conference', { room: String(c.room), n: num(c.participants) })}</li>`)}
          ${!confs.length && html`<li class="muted">${t('admin.video.no_conferences')}</li>`}
        </ul>`
        : html`<p class="muted small">${t('admin.video.conferences', { n: num(confs) })}</p>`}
      <${ErrorLine} error=${error} />
    </li>`;
}

function VideoTab() {
  const [{ data, error, at }, refresh] = usePoll(admin.videoServers, POLL_EVERY);
  const servers = (data && data.servers) || [];
  return html`
    <div class="admin-section" data-testid="admin-video">
      <div class="row admin-toolbar"><span class="grow"></span><${Updated} at=${at} /></div>
      <${ErrorLine} error=${error} />
      <ul class="video-servers">
        ${servers.map((s) => html`<${VideoServer} key=${s.name} server=${s} onChanged=${refresh} />`)}
      </ul>
      ${data && !servers.length && html`<p class="muted">${t('admin.video.none')}</p>`}
      <${Explain} />
    </div>`;
}

// ---- Users -------------------------------------------------------------------------

function CreateUser({ policy, onDone }) {
  const empty = { username: '', display_name: '', password: '', is_admin: false };
  const [form, setForm] = useState(empty);
  const [error, setError] = useState(null);
  const [done, setDone] = useState(null);
  const [busy, setBusy] = useState(false);
  const set = (k) => (e) => setForm({ ...form, [k]: k === 'is_admin' ? e.currentTarget.checked : e.currentTarget.value });
  const submit = async (ev) => {
    ev.preventDefault();
    if (busy || !form.username.trim() || !form.password) return;
    setBusy(true);
    setError(null);
    setDone(null);
    const body = { username: form.username.trim(), password: form.password, is_admin: form.is_admin };
    if (form.display_name.trim()) body.display_name = form.display_name.trim();
    try {
      const res = await admin.createUser(body);
      setDone(res.user || body);
      setForm(empty);
      onDone();
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const min = policy && policy.password_min_length;
  return html`
    <form class="admin-card admin-form" data-testid="admin-create-form" onSubmit=${submit}
      aria-label=${t('admin.users.create')}>
      <h3>${t('admin.users.create')}</h3>
      <label class="field"><span>${t('admin.users.username')}</span>
        <input data-testid="admin-create-username" autocapitalize="none" spellcheck=${false} maxlength="64"
          autocomplete="off" value=${form.username} onInput=${set('username')} /></label>
      <label class="field"><span>${t('admin.users.display_name')}</span>
        <input data-testid="admin-create-display" maxlength="100" autocomplete="off"
          value=${form.display_name} onInput=${set('display_name')} /></label>
      <label class="field"><span>${t('admin.users.password')}</span>
        <input data-testid="admin-create-password" type="password" autocomplete="new-password"
          minlength=${min || undefined} value=${form.password} onInput=${set('password')}
          aria-describedby="admin-password-hint" />
        <small class="muted" id="admin-password-hint" data-testid="admin-password-hint">
          ${min ? t('admin.users.password_hint', { n: min }) : ''}</small></label>
      <label class="check"><input type="checkbox" data-testid="admin-create-admin" checked=${form.is_admin}
        onChange=${set('is_admin')} /> <span>${t('admin.users.is_admin')}</span></label>
      <${ErrorLine} error=${error} testid="admin-create-error" />
      ${done && html`<p class="ok" data-testid="admin-create-done" role="status">
        ${t('admin.users.created', { name: String(done.username ?? '') })}</p>`}
      <div class="row"><button class="primary" type="submit" data-testid="admin-create-submit"
        disabled=${busy || !form.username.trim() || !form.password}>${t('admin.users.create_go')}</button></div>
    </form>`;
}

const CSV_HEADER = 'username,password,display_name,admin';

function ImportUsers({ policy, onDone }) {
  const [csv, setCsv] = useState('');
  const [error, setError] = useState(null);
  const [done, setDone] = useState(null);
  const [busy, setBusy] = useState(false);
  const readFile = (ev) => {
    const file = ev.currentTarget.files && ev.currentTarget.files[0];
    ev.currentTarget.value = '';
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => setCsv(String(reader.result ?? ''));
    reader.onerror = () => setError({ code: 'bad_request', serverMessage: String(reader.error || '') });
    reader.readAsText(file);
  };
  const submit = async (ev) => {
    ev.preventDefault();
    if (busy || !csv.trim()) return;
    setBusy(true);
    setError(null);
    setDone(null);
    try {
      const res = await admin.importUsers(csv);
      setDone(res.created || []);
      setCsv('');
      onDone();
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const rows = error && Array.isArray(error.rows) ? error.rows : [];
  const max = policy && policy.max_import_rows;
  return html`
    <form class="admin-card admin-form" data-testid="admin-import-form" onSubmit=${submit}
      aria-label=${t('admin.users.import')}>
      <h3>${t('admin.users.import')}</h3>
      <p class="muted small">${t('admin.users.import_hint', { header: CSV_HEADER })}
        ${max ? ` ${t('admin.users.import_max', { n: max })}` : ''}</p>
      <label class="field"><span>${t('admin.users.csv')}</span>
        <textarea data-testid="admin-import-csv" rows="6" spellcheck=${false} placeholder=${`${CSV_HEADER}\n`}
          value=${csv} onInput=${(e) => setCsv(e.currentTarget.value)}></textarea></label>
      <label class="field"><span>${t('admin.users.csv_file')}</span>
        <input type="file" accept=".csv,text/csv,text/plain" data-testid="admin-import-file" onChange=${readFile} /></label>
      <${ErrorLine} error=${error} testid="admin-import-error" />
      ${rows.length > 0 && html`
        <ul class="admin-row-errors" data-testid="admin-import-rows">
          ${rows.map((r, i) => html`<li key=${i} data-testid="admin-import-row" data-line=${String(r.line ?? '')}>
            ${t('admin.users.import_row', { line: String(r.line ?? '?'), message: String(r.message ?? '') })}</li>`)}
        </ul>`}
      ${done && html`<p class="ok" data-testid="admin-import-done" role="status">
        ${t('admin.users.imported', { n: done.length, names: done.map((u) => String(u.username ?? '')).join(', ') })}</p>`}
      <div class="row"><button class="primary" type="submit" data-testid="admin-import-submit"
        disabled=${busy || !csv.trim()}>${t('admin.users.import_go')}</button></div>
    </form>`;
}

function UserRow({ user, onChanged, onNote }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [password, setPassword] = useState(null);   // null: the reset form is closed
  const me = store.state.me;
  const self = me && user.id === me.id;
  const act = async (fn, note) => {
    setBusy(true);
    setError(null);
    try {
      const res = await fn();
      const changed = res.user || user;
      onChanged(changed);
      onNote(note(res, changed));
      if (self && typeof changed.is_admin === 'boolean') store.setAdmin(changed.is_admin);
      return true;
    } catch (e) { setError(e); return false; } finally { setBusy(false); }
  };
  const name = String(user.username ?? '');
  const ended = (res) => t('admin.users.sessions_ended', { n: res.revoked_sessions ?? 0 });
  const deactivate = () => act(() => admin.deactivateUser(user.id),
    (res) => `${t('admin.users.deactivated', { name })} ${ended(res)}`);
  const reactivate = () => act(() => admin.reactivateUser(user.id), () => t('admin.users.reactivated', { name }));
  const role = () => act(() => admin.setRole(user.id, !user.is_admin),
    (res, u) => t(u.is_admin ? 'admin.users.granted' : 'admin.users.revoked', { name }));
  const reset = async (ev) => {
    ev.preventDefault();
    if (!password) return;
    const ok = await act(() => admin.resetPassword(user.id, password),
      (res) => `${t('admin.users.password_set', { name })} ${ended(res)}`);
    if (ok) setPassword(null);
  };
  return html`
    <tr data-testid="admin-user-row" data-user-id=${user.id} data-username=${name}
      data-active=${user.active ? 'true' : 'false'} data-admin=${user.is_admin ? 'true' : 'false'}
      class=${user.active ? '' : 'inactive'}>
      <td class="strong">@${name}</td>
      <td>${String(user.display_name ?? '')}</td>
      <td>
        ${user.active ? html`<${Tag} kind="ok">${t('admin.users.active')}<//>`
          : html`<${Tag} kind="bad" testid="admin-user-inactive">${t('admin.users.inactive')}<//>`}
        ${user.is_admin && html` <${Tag} kind="info" testid="admin-user-admin">${t('admin.users.admin')}<//>`}
      </td>
      <td class="small"><${Time} iso=${user.created_at} /></td>
      <td><div class="admin-actions">
        ${user.active
          ? html`<button type="button" class="danger" data-testid="admin-user-deactivate" disabled=${busy}
              onClick=${deactivate}>${t('admin.users.deactivate')}</button>`
          : html`<button type="button" data-testid="admin-user-reactivate" disabled=${busy}
              onClick=${reactivate}>${t('admin.users.reactivate')}</button>`}
        <button type="button" data-testid="admin-user-password" aria-expanded=${password != null} disabled=${busy}
          onClick=${() => setPassword(password == null ? '' : null)}>${t('admin.users.reset')}</button>
        <button type="button" data-testid="admin-user-role" disabled=${busy} onClick=${role}>
          ${user.is_admin ? t('admin.users.revoke_admin') : t('admin.users.grant_admin')}</button>
        ${password != null && html`
          <form class="row" onSubmit=${reset}>
            <input type="password" data-testid="admin-user-password-input" autocomplete="new-password"
              aria-label=${t('admin.users.new_password', { name })} placeholder=${t('admin.users.new_password', { name })}
              value=${password} onInput=${(e) => setPassword(e.currentTarget.value)} />
            <button type="submit" data-testid="admin-user-password-save" disabled=${busy || !password}>
              ${t('admin.users.set_password')}</button>
          </form>`}
        <${ErrorLine} error=${error} testid="admin-user-error" />
      </div></td>
    </tr>`;
}

function UsersTab() {
  const [policy, setPolicy] = useState(null);
  const [policyError, setPolicyError] = useState(null);
  const [query, setQuery] = useState('');
  const [note, setNote] = useState(null);
  useEffect(() => { admin.policy().then(setPolicy, setPolicyError); }, []);
  const list = usePaged(async (after) => {
    const res = await admin.users({ q: query.trim(), after, limit: PAGE });
    return { items: res.users || [], next: res.next };
  }, { value: query.trim(), delay: query ? SEARCH_DELAY : 0 });
  const byId = (u) => (x) => x.id === u.id;
  return html`
    <div class="admin-section" data-testid="admin-users">
      <${ErrorLine} error=${policyError} />
      <div class="admin-columns">
        <${CreateUser} policy=${policy} onDone=${list.reload} />
        <${ImportUsers} policy=${policy} onDone=${list.reload} />
      </div>
      <h3>${t('admin.users.list')}</h3>
      <div class="row admin-toolbar" role="search">
        <label class="inline-field grow">
          <span class="sr-only">${t('admin.users.search')}</span>
          <input type="search" class="grow" data-testid="admin-user-search" autocapitalize="none" spellcheck=${false}
            placeholder=${t('admin.users.search')} aria-label=${t('admin.users.search')} value=${query}
            onInput=${(e) => setQuery(e.currentTarget.value)} />
        </label>
      </div>
      ${note && html`<p class="notice" data-testid="admin-user-note" role="status">${note}</p>`}
      <${ErrorLine} error=${list.error} />
      <table class="admin-table">
        <thead><tr><th>${t('admin.users.username')}</th><th>${t('admin.users.display_name')}</th>
          <th>${t('admin.col.state')}</th><th>${t('admin.col.created')}</th><th>${t('admin.col.actions')}</th></tr></thead>
        <tbody data-testid="admin-user-list">
          ${list.items.map((u) => html`<${UserRow} key=${u.id} user=${u}
            onChanged=${(changed) => list.replace(byId(u), { ...u, ...changed })} onNote=${setNote} />`)}
        </tbody>
      </table>
      ${!list.loading && !list.error && !list.items.length && html`<p class="muted">${t('admin.users.none')}</p>`}
      ${list.next != null && html`<div class="row"><button type="button" data-testid="admin-users-more"
        disabled=${list.loading} onClick=${list.more}>${t('admin.more')}</button></div>`}
    </div>`;
}

// ---- Rooms -------------------------------------------------------------------------

// A destructive button that asks once more, inside the page.
function Confirm({ label, question, testid, onConfirm, disabled }) {
  const [asking, setAsking] = useState(false);
  if (!asking) {
    return html`<button type="button" class="danger" data-testid=${testid} disabled=${disabled}
      onClick=${() => setAsking(true)}>${label}</button>`;
  }
  return html`
    <span class="confirm" role="group" data-testid=${`${testid}-ask`}>
      <span>${question}</span>
      <button type="button" class="danger-solid" data-testid=${`${testid}-confirm`} disabled=${disabled}
        onClick=${() => { setAsking(false); onConfirm(); }}>${t('admin.confirm.yes')}</button>
      <button type="button" data-testid=${`${testid}-cancel`} onClick=${() => setAsking(false)}>
        ${t('admin.confirm.no')}</button>
    </span>`;
}

function RoomMembers({ room, onChanged }) {
  const [members, setMembers] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const load = () => admin.roomMembers(room.id).then((r) => { setMembers(r.members || []); setError(null); }, setError);
  useEffect(() => { load(); }, [room.id]);
  const remove = async (u) => {
    setBusy(true);
    setError(null);
    try { await admin.removeMember(room.id, u.id); await load(); onChanged(t('admin.rooms.removed', { name: String(u.username ?? ''), room: String(room.name ?? room.id) })); } catch (e) { setError(e); } finally { setBusy(false); }
  };
  return html`
    <tr class="admin-subrow"><td colspan="6">
      <div data-testid="admin-room-members-list" data-room-id=${room.id}>
        ${members == null && !error && html`<p class="muted">${t('admin.loading')}</p>`}
        <ul class="admin-members">
          ${(members || []).map((u) => html`
            <li key=${u.id} data-testid="admin-room-member" data-username=${String(u.username ?? '')}>
              <span class="strong">${String(u.display_name || u.username || '')}</span>
              <span class="muted">@${String(u.username ?? '')}</span>
              ${u.guest && html`<${Tag} kind="info">${t('admin.rooms.guest')}<//>`}
              <${Confirm} testid="admin-member-remove" label=${t('admin.rooms.remove')} disabled=${busy}
                question=${t('admin.rooms.remove_ask', { name: String(u.username ?? '') })} onConfirm=${() => remove(u)} />
            </li>`)}
        </ul>
        ${members && !members.length && html`<p class="muted">${t('admin.rooms.no_members')}</p>`}
        <${ErrorLine} error=${error} />
      </div>
    </td></tr>`;
}

function RoomsTab() {
  const [query, setQuery] = useState('');
  const [open, setOpen] = useState(null);   // the room whose members are shown
  const [note, setNote] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const list = usePaged(async (after) => {
    const res = await admin.rooms({ q: query.trim(), after, limit: PAGE });
    return { items: res.rooms || [], next: res.next };
  }, { value: query.trim(), delay: query ? SEARCH_DELAY : 0 });
  const del = async (room) => {
    setBusy(true);
    setError(null);
    try {
      await admin.deleteRoom(room.id);
      list.remove((r) => r.id === room.id);
      if (open === room.id) setOpen(null);
      setNote(t('admin.rooms.deleted', { room: String(room.name ?? room.id) }));
    } catch (e) { setError(e); } finally { setBusy(false); }
  };
  const changed = (text) => { setNote(text); list.reload(); };
  return html`
    <div class="admin-section" data-testid="admin-rooms">
      <div class="row admin-toolbar" role="search">
        <label class="inline-field grow">
          <span class="sr-only">${t('admin.rooms.search')}</span>
          <input type="search" class="grow" data-testid="admin-room-search" spellcheck=${false}
            placeholder=${t('admin.rooms.search')} aria-label=${t('admin.rooms.search')} value=${query}
            onInput=${(e) => setQuery(e.currentTarget.value)} />
        </label>
      </div>
      ${note && html`<p class="notice" data-testid="admin-room-note" role="status">${note}</p>`}
      <${ErrorLine} error=${error || list.error} />
      <table class="admin-table">
        <thead><tr><th class="num">${t('admin.col.id')}</th><th>${t('admin.col.name')}</th><th>${t('admin.col.kind')}</th>
          <th class="num">${t('admin.col.members')}</th><th class="num">${t('admin.col.last_seq')}</th>
          <th>${t('admin.col.actions')}</th></tr></thead>
        <tbody data-testid="admin-room-list">
          ${list.items.map((r) => html`
            <tr key=${r.id} data-testid="admin-room-row" data-room-id=${r.id} data-name=${String(r.name ?? '')}>
              <td class="num">${r.id}</td>
              <td class="strong">${String(r.name ?? '')}</td>
              <td>${t(r.kind === 'direct' ? 'admin.rooms.direct' : 'admin.rooms.group')}</td>
              <td class="num">${num(r.members)}</td>
              <td class="num">${num(r.last_seq)}</td>
              <td><div class="admin-actions">
                <button type="button" data-testid="admin-room-members" aria-expanded=${open === r.id}
                  onClick=${() => setOpen(open === r.id ? null : r.id)}>${t('admin.rooms.members')}</button>
                <${Confirm} testid="admin-room-delete" label=${t('admin.rooms.delete')} disabled=${busy}
                  question=${t('admin.rooms.delete_ask', { room: String(r.name ?? r.id) })} onConfirm=${() => del(r)} />
              </div></td>
            </tr>
            ${open === r.id && html`<${RoomMembers} key=${`m${r.id}`} room=${r} onChanged=${changed} />`}`)}
        </tbody>
      </table>
      ${!list.loading && !list.error && !list.items.length && html`<p class="muted">${t('admin.rooms.none')}</p>`}
      ${list.next != null && html`<div class="row"><button type="button" data-testid="admin-rooms-more"
        disabled=${list.loading} onClick=${list.more}>${t('admin.more')}</button></div>`}
    </div>`;
}

// ---- Audit log ---------------------------------------------------------------------

function target(kind, value) {
  if (value == null || value === '') return null;
  if (typeof value === 'object') {
    const label = value.username ?? value.name ?? value.id;
    return t(`admin.audit.${kind}`, { v: kind === 'user' && value.username ? `@${value.username}` : String(label ?? '') });
  }
  return t(`admin.audit.${kind}`, { v: kind === 'seq' ? String(value) : `#${value}` });
}

function AuditTab() {
  const [actor, setActor] = useState('');
  const [action, setAction] = useState('');
  const [filter, setFilter] = useState({ actor: '', action: '' });
  const list = usePaged(async (before) => {
    const res = await admin.audit({ actor: filter.actor, action: filter.action, before, limit: PAGE });
    return { items: res.entries || [], next: res.next };
  }, { value: `${filter.actor}\n${filter.action}` });
  const apply = (ev) => {
    if (ev) ev.preventDefault();
    const next = { actor: actor.trim().replace(/^@/, ''), action };
    if (next.actor === filter.actor && next.action === filter.action) list.reload();
    else setFilter(next);
  };
  useEffect(() => { if (action !== filter.action) setFilter({ actor: actor.trim().replace(/^@/, ''), action }); }, [action]);
  return html`
    <div class="admin-section" data-testid="admin-audit">
      <form class="row wrap admin-toolbar" role="search" onSubmit=${apply}>
        <label class="inline-field">
          <span class="sr-only">${t('admin.audit.actor')}</span>
          <input type="search" data-testid="admin-audit-actor" autocapitalize="none" spellcheck=${false}
            placeholder=${t('admin.audit.actor')} aria-label=${t('admin.audit.actor')} value=${actor}
            onInput=${(e) => setActor(e.currentTarget.value)} />
        </label>
        <label class="inline-field">
          <span class="sr-only">${t('admin.audit.action')}</span>
          <select data-testid="admin-audit-action" aria-label=${t('admin.audit.action')} value=${action}
            onChange=${(e) => setAction(e.currentTarget.value)}>
            <option value="">${t('admin.audit.any_action')}</option>
            ${AUDIT_ACTIONS.map((a) => html`<option value=${a}>${t(`admin.action.${a}`)}</option>`)}
          </select>
        </label>
        <button type="submit" data-testid="admin-audit-apply">${t('admin.audit.apply')}</button>
      </form>
      <${ErrorLine} error=${list.error} />
      <table class="admin-table">
        <thead><tr><th>${t('admin.col.time')}</th><th>${t('admin.audit.actor')}</th><th>${t('admin.audit.action')}</th>
          <th>${t('admin.audit.target')}</th><th>${t('admin.audit.detail')}</th></tr></thead>
        <tbody data-testid="admin-audit-list">
          ${list.items.map((e) => html`
            <tr key=${e.id} data-testid="admin-audit-entry" data-id=${e.id} data-action=${String(e.action ?? '')}
              data-actor=${e.actor ? String(e.actor.username ?? '') : ''}>
              <td class="small"><${Time} iso=${e.at} /></td>
              <td data-testid="admin-audit-actor-name">${e.actor ? `@${String(e.actor.username ?? e.actor.id ?? '')}` : t('admin.audit.system')}</td>
              <td data-testid="admin-audit-action-name" title=${String(e.action ?? '')}>
                ${AUDIT_ACTIONS.includes(e.action) ? t(`admin.action.${e.action}`) : String(e.action ?? '')}</td>
              <td data-testid="admin-audit-target">${[target('user', e.user_name ? { username: e.user_name } : e.user),
                target('room', e.room), target('seq', e.seq)].filter(Boolean).join(' · ')}</td>
              <td class="muted small" data-testid="admin-audit-detail">${plain(e.detail)}</td>
            </tr>`)}
        </tbody>
      </table>
      ${!list.loading && !list.error && !list.items.length && html`<p class="muted">${t('admin.audit.none')}</p>`}
      ${list.loading && html`<p class="muted">${t('admin.loading')}</p>`}
      ${list.next != null && html`<div class="row"><button type="button" data-testid="admin-audit-older"
        disabled=${list.loading} onClick=${list.more}>${t('admin.audit.older')}</button></div>`}
    </div>`;
}

// ---- the view ----------------------------------------------------------------------

const VIEWS = { cluster: ClusterTab, video: VideoTab, users: UsersTab, rooms: RoomsTab, audit: AuditTab };

export function AdminView() {
  const [tab, setTab] = useState('cluster');
  const tabs = useRef(null);
  const onKey = (ev) => {
    const i = TABS.indexOf(tab);
    let next = null;
    if (ev.key === 'ArrowRight') next = TABS[(i + 1) % TABS.length];
    else if (ev.key === 'ArrowLeft') next = TABS[(i + TABS.length - 1) % TABS.length];
    else if (ev.key === 'Home') next = TABS[0];
    else if (ev.key === 'End') next = TABS[TABS.length - 1];
    if (!next) return;
    ev.preventDefault();
    setTab(next);
    const el = tabs.current && tabs.current.querySelector(`[data-tab="${next}"]`);
    if (el) el.focus();
  };
  const Tab = VIEWS[tab];
  const c = store.state.conf;
  const confRoom = c && store.state.rooms.get(c.room);
  return html`
    <main class="admin" data-testid="admin-view" aria-labelledby="admin-title">
      ${c && html`<${ConferenceView} title=${String((confRoom && confRoom.name) ?? '')} />`}
      <header class="admin-header">
        <h2 class="admin-title" id="admin-title">${t('admin.title')}</h2>
        <div class="admin-tabs" role="tablist" aria-label=${t('admin.title')} ref=${tabs} onKeyDown=${onKey}>
          ${TABS.map((name) => html`
            <button type="button" role="tab" id=${`admin-tab-${name}`} data-testid="admin-tab" data-tab=${name}
              aria-selected=${tab === name ? 'true' : 'false'} aria-controls="admin-panel"
              tabindex=${tab === name ? 0 : -1} onClick=${() => setTab(name)}>${t(`admin.tab.${name}`)}</button>`)}
        </div>
      </header>
      <section class="admin-panel" id="admin-panel" role="tabpanel" data-testid="admin-panel" data-tab=${tab}
        aria-labelledby=${`admin-tab-${tab}`}>
        <${Tab} key=${tab} />
      </section>
    </main>`;
}
