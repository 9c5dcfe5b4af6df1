// Every UI string of the web app, in English and Japanese.
// t(key, {name: ...}) fills {name} placeholders; the values are plain text.

const catalogue = {
  en: {
    'app.name': 'camcluster',
    'lang.label': 'Language',
    'login.title': 'Sign in',
    'login.username': 'User name',
    'login.password': 'Password',
    'login.submit': 'Sign in',
    'login.busy': 'Signing in…',
    'login.bad_credentials': 'Wrong user name or password.',
    'login.rate_limited': 'Too many attempts. Try again in {seconds} s.',
    'login.unavailable': 'The server is unavailable. Try again later.',
    'login.failed': 'Sign-in failed ({code}).',
    'login.session_ended': 'Your session has ended. Please sign in again.',
    'conn.reconnecting': 'Reconnecting…',
    'conn.connected': 'Connected to {node}',
    'me.label': 'Signed in as',
    'logout': 'Sign out',
    'status.label': 'Status',
    'status.online': 'Online',
    'status.away': 'Away',
    'status.busy': 'Busy',
    'status.invisible': 'Invisible',
    'status.offline': 'Offline',
    'notify.enable': 'Enable notifications',
    'rooms.label': 'Rooms',
    'rooms.empty': 'No rooms yet.',
    'rooms.unread': '{count} unread',
    'room.new': 'New room',
    'room.new.name': 'Room name',
    'room.new.members': 'Members (comma-separated user names)',
    'room.new.create': 'Create',
    'room.new.cancel': 'Cancel',
    'dm.new': 'New message',
    'dm.search': 'Search people',
    'dm.none': 'Nobody found.',
    'dm.close': 'Close',
    'room.none': 'Choose a room, or start a conversation.',
    'room.members': 'Members',
    'room.members.count': 'Members ({count})',
    'room.invite': 'Invite (comma-separated user names)',
    'room.invite.submit': 'Invite',
    'room.invite.added': 'Added: {names}',
    'room.invite.none': 'Nobody new was added.',
    'room.leave': 'Leave',
    'room.direct': 'Direct message',
    'messages.label': 'Messages',
    'messages.loading': 'Loading…',
    'messages.start': 'This is the beginning of the room.',
    'message.pending': 'Sending…',
    'message.failed': 'Not sent',
    'message.retry': 'Retry',
    'message.deleted': 'This message was deleted.',
    'message.you': 'You',
    'preview.you': 'You: {text}',
    'preview.sender': '{name}: {text}',
    'sys.room_created': 'created the room “{name}”',
    'sys.room_created_with': 'created the room “{name}” with {members}',
    'sys.members_added': 'added {users}',
    'sys.member_left': 'left the room',
    'sys.member_removed': 'removed {users}',
    'sys.message_deleted': 'deleted a message',
    'sys.room_deleted': 'deleted the room',
    'day.today': 'Today',
    'day.yesterday': 'Yesterday',
    'typing.one': '{a} is typing…',
    'typing.two': '{a} and {b} are typing…',
    'typing.many': 'Several people are typing…',
    'composer.label': 'Message',
    'composer.placeholder': 'Write a message (Enter sends, Shift+Enter for a new line)',
    'composer.send': 'Send',
    'list.separator': ', ',
    'error.no_such_user': 'No such user.',
    'error.forbidden': 'Not allowed.',
    'error.not_a_member': 'You are not a member of this room.',
    'error.rate_limited': 'Too many requests. Try again later.',
    'error.limit_reached': 'A limit was reached.',
    'error.message_too_large': 'The message is too long.',
    'error.unavailable': 'The server is unavailable. Try again.',
    'error.closed': 'Not connected. Try again.',
    'error.timeout': 'No answer from the server. Try again.',
    'error.bad_request': 'The request was refused.',
    'error.conflict': 'Conflict with a stored message.',
    'error.other': 'Error: {code}',
  },
  ja: {
    'app.name': 'camcluster',
    'lang.label': '言語',
    'login.title': 'ログイン',
    'login.username': 'ユーザー名',
    'login.password': 'パスワード',
    'login.submit': 'ログイン',
    'login.busy': 'ログイン中…',
    'login.bad_credentials': 'ユーザー名またはパスワードが違います。',
    'login.rate_limited': '試行回数が多すぎます。{seconds} 秒後にもう一度お試しください。',
    'login.unavailable': 'サーバーに接続できません。しばらくしてからお試しください。',
    'login.failed': 'ログインできませんでした（{code}）。',
    'login.session_ended': 'セッションが終了しました。もう一度ログインしてください。',
    'conn.reconnecting': '再接続中…',
    'conn.connected': '{node} に接続しました',
    'me.label': 'ログイン中',
    'logout': 'ログアウト',
    'status.label': '状態',
    'status.online': 'オンライン',
    'status.away': '離席中',
    'status.busy': '取り込み中',
    'status.invisible': 'オフライン表示',
    'status.offline': 'オフライン',
    'notify.enable': '通知を有効にする',
    'rooms.label': 'ルーム',
    'rooms.empty': 'ルームはまだありません。',
    'rooms.unread': '未読 {count} 件',
    'room.new': '新しいルーム',
    'room.new.name': 'ルーム名',
    'room.new.members': 'メンバー（ユーザー名をカンマ区切りで）',
    'room.new.create': '作成',
    'room.new.cancel': 'キャンセル',
    'dm.new': '新しいメッセージ',
    'dm.search': 'ユーザーを検索',
    'dm.none': '見つかりませんでした。',
    'dm.close': '閉じる',
    'room.none': 'ルームを選ぶか、会話を始めてください。',
    'room.members': 'メンバー',
    'room.members.count': 'メンバー（{count}）',
    'room.invite': '招待（ユーザー名をカンマ区切りで）',
    'room.invite.submit': '招待',
    'room.invite.added': '追加しました: {names}',
    'room.invite.none': '新しく追加された人はいません。',
    'room.leave': '退出',
    'room.direct': 'ダイレクトメッセージ',
    'messages.label': 'メッセージ',
    'messages.loading': '読み込み中…',
    'messages.start': 'ここがルームの始まりです。',
    'message.pending': '送信中…',
    'message.failed': '送信できませんでした',
    'message.retry': '再送信',
    'message.deleted': 'このメッセージは削除されました。',
    'message.you': 'あなた',
    'preview.you': 'あなた: {text}',
    'preview.sender': '{name}: {text}',
    'sys.room_created': 'ルーム「{name}」を作成しました',
    'sys.room_created_with': 'ルーム「{name}」を作成しました（{members}）',
    'sys.members_added': '{users} を追加しました',
    'sys.member_left': '退出しました',
    'sys.member_removed': '{users} を削除しました',
    'sys.message_deleted': 'メッセージを削除しました',
    'sys.room_deleted': 'ルームを削除しました',
    'day.today': '今日',
    'day.yesterday': '昨日',
    'typing.one': '{a} さんが入力中…',
    'typing.two': '{a} さんと {b} さんが入力中…',
    'typing.many': '複数の人が入力中…',
    'composer.label': 'メッセージ',
    'composer.placeholder': 'メッセージを入力（Enter で送信、Shift+Enter で改行）',
    'composer.send': '送信',
    'list.separator': '、',
    'error.no_such_user': 'そのユーザーは存在しません。',
    'error.forbidden': '許可されていません。',
    'error.not_a_member': 'このルームのメンバーではありません。',
    'error.rate_limited': 'リクエストが多すぎます。しばらくしてからお試しください。',
    'error.limit_reached': '上限に達しました。',
    'error.message_too_large': 'メッセージが長すぎます。',
    'error.unavailable': 'サーバーを利用できません。もう一度お試しください。',
    'error.closed': '接続されていません。もう一度お試しください。',
    'error.timeout': 'サーバーから応答がありません。もう一度お試しください。',
    'error.bad_request': 'リクエストが拒否されました。',
    'error.conflict': '保存済みのメッセージと競合しています。',
    'error.other': 'エラー: {code}',
  },
};

export const LANGS = [['en', 'English'], ['ja', '日本語']];
const STORAGE_KEY = 'cam.lang';

function initialLang() {
  try {
    const stored = localStorage.getItem(STORAGE_KEY);
    if (stored && catalogue[stored]) return stored;
  } catch { /* storage unavailable */ }
  for (const tag of navigator.languages || [navigator.language || 'en']) {
    const base = String(tag).toLowerCase().split('-')[0];
    if (catalogue[base]) return base;
  }
  return 'en';
}

let lang = initialLang();
const listeners = new Set();
document.documentElement.lang = lang;

export function getLang() { return lang; }

export function setLang(next) {
  if (!catalogue[next] || next === lang) return;
  lang = next;
  document.documentElement.lang = lang;
  try { localStorage.setItem(STORAGE_KEY, lang); } catch { /* ignore */ }
  for (const fn of listeners) fn(lang);
}

export function onLangChange(fn) { listeners.add(fn); return () => listeners.delete(fn); }

export function t(key, params) {
  let s = catalogue[lang][key] ?? catalogue.en[key] ?? key;
  if (params) s = s.replace(/\{(\w+)\}/g, (m, name) => (name in params ? String(params[name]) : m));
  return s;
}

// A localized message for an error code of the protocol (or of this app: closed, timeout).
export function errorText(code) {
  if (!code) return t('error.other', { code: 'internal' });
  const key = `error.${code}`;
  return catalogue.en[key] ? t(key) : t('error.other', { code });
}

export function joinNames(names) { return names.join(t('list.separator')); }
