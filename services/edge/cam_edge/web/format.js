// Formatting of times, days, system messages and previews (all as plain text).

import { getLang, joinNames, t } from './i18n.js';

const locale = () => (getLang() === 'ja' ? 'ja-JP' : 'en');

export function timeText(ts) {
  return new Date(ts).toLocaleTimeString(locale(), { hour: 'numeric', minute: '2-digit' });
}

export function fullTimeText(ts) {
  return new Date(ts).toLocaleString(locale(), { dateStyle: 'full', timeStyle: 'short' });
}

export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function dayText(ts) {
  const d = new Date(ts);
  const today = new Date();
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (dayKey(d) === dayKey(today)) return t('day.today');
  if (dayKey(d) === dayKey(yesterday)) return t('day.yesterday');
  const sameYear = d.getFullYear() === today.getFullYear();
  return d.toLocaleDateString(locale(), {
    weekday: 'long', month: 'long', day: 'numeric', ...(sameYear ? {} : { year: 'numeric' }),
  });
}

function names(list) {
  return joinNames((Array.isArray(list) ? list : []).map(String));
}

// The line for a system message, without the acting user's name (shown as the
// sender); null for an event this app does not know (not shown).
export function systemText(msg) {
  let ev;
  try { ev = JSON.parse(msg.body); } catch { return null; }
  if (!ev || typeof ev !== 'object') return null;
  switch (ev.event) {
    case 'room_created':
      return Array.isArray(ev.members) && ev.members.length
        ? t('sys.room_created_with', { name: String(ev.name ?? ''), members: names(ev.members) })
        : t('sys.room_created', { name: String(ev.name ?? '') });
    case 'members_added': return t('sys.members_added', { users: names(ev.users) });
    case 'member_left': return t('sys.member_left');
    case 'member_removed': return t('sys.member_removed', { users: names(ev.users) });
    case 'message_deleted': return t('sys.message_deleted');
    case 'room_deleted': return t('sys.room_deleted');
    default: return null;
  }
}

// One line for the room list.
export function previewText(room, me, nameOf = (msg) => msg.sender_name ?? '') {
  const msg = room.last_message;
  if (!msg) return '';
  let text;
  if (msg.kind === 'text') text = String(msg.body ?? '');
  else if (msg.kind === 'system') text = systemText(msg);
  else if (msg.kind === 'deleted') text = t('message.deleted');
  else if (msg.kind === 'file' && msg.file) text = t('preview.file', { name: String(msg.file.name ?? '') });
  if (text == null) return '';
  text = text.replace(/\s+/g, ' ').slice(0, 200);
  const own = msg.kind === 'text' || msg.kind === 'file';
  if (me && msg.sender === me.id && own) return t('preview.you', { text });
  if (room.kind === 'direct' && own) return text;
  return t('preview.sender', { name: nameOf(msg), text });
}

// A file size for people: 0 B, 999 B, 1.5 KB, 12 MB, 1.2 GB (units of 1024).
export function sizeText(bytes) {
  let n = Math.max(0, Number(bytes) || 0);
  const units = ['size.b', 'size.kb', 'size.mb', 'size.gb', 'size.tb'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  const digits = i === 0 || n >= 100 ? 0 : 1;
  const value = new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(n);
  return t(units[i], { n: value });
}
