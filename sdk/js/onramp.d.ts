// Types of Onramp's browser SDK (onramp.js / onramp.iife.js, which sets window.Onramp).
//
// No call throws into the page: event calls resolve to a CallResult, decide() to a Decision
// (the fallback on any failure), flush() to a boolean; none of these promises rejects.

export declare const VERSION: string;
/** Where analytics.js keeps its anonymous id: localStorage key and cookie name. */
export declare const SEGMENT_ANONYMOUS_ID_KEY: 'ajs_anonymous_id';

export interface OnrampOptions {
  /** Base URL of Onramp's collector, e.g. "https://onramp.example.com" ("" = same origin). */
  host?: string;
  /** The source's write key (public: it can only send events). */
  writeKey: string;
  /** A `collector.decide_keys` value: lets `decide()` ask for decisions, reads no profile.
   * Without it decide() answers the fallback. */
  decideKey?: string;
  /** @deprecated use `decideKey` (an old read key still works for `/v1/decide`). */
  readKey?: string;
  /** With `collector.identity_secret`: the hex HMAC-SHA256 of the signed-in user's id, which
   * your server computes and renders into the page; decide() sends it with the userId. Also
   * `identify(id, traits, { userHash })`. Kept in storage with the user it is for (init's is
   * for the user identified next); identify() of another user and reset() drop it. */
  userHash?: string;
  /** Send as soon as this many events wait (default 20; also the largest batch). */
  flushAt?: number;
  /** Send at most this long after the first waiting event (default 1000 ms). */
  flushIntervalMs?: number;
  /** Offline queue bound; past it the oldest waiting events are dropped (default 1000). */
  maxQueueSize?: number;
  /** Largest request body (default 450 KB; the collector accepts 500 KB). */
  maxBatchBytes?: number;
  /** Largest sendBeacon body (default 60 KB; browsers refuse more than 64 KB). */
  maxBeaconBytes?: number;
  /** Largest event (default 32 KB, the collector's limit): a bigger call is refused at once. */
  maxEventBytes?: number;
  /** First retry delay; doubles per failure, with jitter (default 500 ms). */
  retryBaseMs?: number;
  /** Longest retry delay, unless Retry-After asks for more (default 30 s). */
  retryMaxMs?: number;
  /** A session ends after this much inactivity (default 30 min). */
  sessionTimeoutMs?: number;
  /** decide() gives the fallback after this long (default 1500 ms). */
  decideTimeoutMs?: number;
  /** localStorage key prefix (default "onramp"). */
  storagePrefix?: string;
  /** Add the decision id to Step events of the step a decision chose (default true). */
  echoDecisions?: boolean;
  /** Listen to pagehide / visibilitychange / online (default true). */
  listenToPage?: boolean;
  /** Use the anonymous id of analytics.js (Segment) on this page when it has one: its
   * `ajs_anonymous_id` in localStorage, else its `ajs_anonymous_id` cookie, read on every call
   * (default false: this SDK's own id, `onramp.anonymousId` in localStorage). */
  reuseSegmentAnonymousId?: boolean;
  /** Where warnings about refused calls go (default console.warn). */
  warn?: (message: string) => void;
  // Injection points for tests and non-browser hosts.
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>;
  /** The page's cookies as `document.cookie` gives them (default: document.cookie). */
  cookie?: () => string;
  fetch?: typeof fetch;
  sendBeacon?: (url: string, data: Blob | string) => boolean;
  now?: () => number;
  random?: () => Uint8Array;
  setTimeout?: (f: () => void, ms: number) => unknown;
  clearTimeout?: (handle: unknown) => void;
}

export interface CallOptions {
  /** The onboarding step this event belongs to (context.onramp.stepId). */
  stepId?: string;
  /** Merged into the event's Segment context. */
  context?: Record<string, unknown>;
  /** identify() and alias() only: the new user's userHash for decide() (not sent with the
   * event). */
  userHash?: string;
}

export interface DecideOptions {
  /** Restrict the answer to these actions (each must be eligible, or the answer is the fallback). */
  candidates?: string[];
  /** Request context (device, locale, ...): features of the decision. */
  context?: Record<string, unknown>;
  /** Give up after this long (default: decideTimeoutMs). */
  timeoutMs?: number;
  /** What `chosen` is when Onramp is slow, down or refuses. */
  fallback?: string | null;
  /** Idempotency key: the same id gives the same draw. */
  decisionId?: string;
  /** The userHash for this call (default: the `userHash` option). */
  userHash?: string;
}

export interface RankedAction {
  action: string;
  score: number | null;
  probability: number;
}

export interface Decision {
  decisionId: string | null;
  slot: string;
  chosen: string | null;
  ranked: RankedAction[];
  /** True when `chosen` is the caller's fallback. */
  fallback: boolean;
  /** Why the fallback: "timeout", "network", "http_<status>", "no_decide_key", "nothing_eligible",
   * "invalid_call" (no slot, options not an object: also warned), "error" (an SDK error),
   * "not_initialized" (the page-wide decide() before init()), "disabled" (a client init refused). */
  reason: string | null;
  status: number | null;
  propensity?: number | null;
  arm?: string;
  experiment?: string;
  modelVersion?: number;
  policy?: string;
  coldStart?: boolean;
  coldReason?: string | null;
  latencyMs?: number;
}

export type Outcome = 'completed' | 'abandoned' | 'converted';

/** What an event call resolves to, once the event is queued (in localStorage: `flush()` waits
 * for delivery). A refused call (bad arguments) resolves `{ok: false, event: null, error}`, warns
 * and reports `on('error')` with kind "invalid_call"; it never throws and never rejects. */
export interface CallResult {
  ok: boolean;
  /** A copy of the queued Segment event (type, messageId, anonymousId, context, ...). */
  event: Record<string, unknown> | null;
  error: string | null;
}

export interface Stats {
  enqueued: number;
  sent: number;
  dropped: number;
  retries: number;
  batches: number;
  beaconed: number;
  queued: number;
  attempt: number;
  healthy: boolean;
}

export interface OnrampClient {
  readonly version: string;
  /** Why this client refuses every call (createClient/init without a writeKey), else null. */
  readonly disabled: string | null;
  /** This SDK's anonymous id, or analytics.js's with `reuseSegmentAnonymousId`. */
  readonly anonymousId: string;
  readonly userId: string | null;
  /** The group of the last group() call (persisted), or null. */
  readonly groupId: string | null;
  readonly sessionId: string | null;
  readonly queued: number;
  identify(userId: string | number | null, traits?: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  identify(traits: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  /** Segment's alias: `userId` and `previousId` (default: the current userId, else the
   * anonymousId) are the same user; afterwards `userId` is this client's user id (persisted). */
  alias(userId: string | number, previousId?: string | number | null, options?: CallOptions): Promise<CallResult>;
  alias(userId: string | number, options: CallOptions): Promise<CallResult>;
  /** Segment's group: the user belongs to account/team `groupId` (kept as this client's
   * groupId); `traits` describe the group. */
  group(groupId: string | number, traits?: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  /** Update the traits of the current group (the groupId of the last group() call). */
  group(traits: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  track(event: string, properties?: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  page(name?: string | null, properties?: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  page(properties: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  /** Segment's form: a category, then the name. */
  page(category: string, name: string, properties?: Record<string, unknown>, options?: CallOptions): Promise<CallResult>;
  /** Never rejects: on a timeout, an error, a refusal or a bad call it resolves the fallback. */
  decide(slot: string, options?: DecideOptions): Promise<Decision>;
  reportOutcome(decisionId: string, outcome: Outcome, properties?: Record<string, unknown>): Promise<CallResult>;
  /** Send what is queued; resolves true when the queue is empty, false when a retry is scheduled
   * (never rejects). */
  flush(): Promise<boolean>;
  /** Forget the user (logout): new anonymousId, session and group. */
  reset(): void;
  /** An unknown kind warns and returns a no-op unsubscribe. */
  on(kind: 'error' | 'sent' | 'decision', listener: (detail: any) => void): () => void;
  beaconFlush(): number;
  close(): void;
  queuedEvents(): Array<Record<string, unknown>>;
  stats(): Stats;
}

/** Never throws: without a writeKey it warns and returns a client whose calls all resolve
 * `{ok: false}` (see `disabled`). */
export declare function createClient(options: OnrampOptions): OnrampClient;
/** The page-wide client (a second call replaces it). Before init, the page-wide calls warn and
 * resolve `{ok: false}` (decide: the fallback, reason "not_initialized"). */
export declare function init(options: OnrampOptions): OnrampClient;
export declare const identify: OnrampClient['identify'];
export declare const alias: OnrampClient['alias'];
export declare const group: OnrampClient['group'];
export declare const track: OnrampClient['track'];
export declare const page: OnrampClient['page'];
export declare function decide(slot: string, options?: DecideOptions): Promise<Decision>;
export declare function reportOutcome(decisionId: string, outcome: Outcome, properties?: Record<string, unknown>): Promise<CallResult>;
export declare function flush(): Promise<boolean>;
export declare function reset(): void;
export declare function on(kind: 'error' | 'sent' | 'decision', listener: (detail: any) => void): () => void;
export declare function uuid4(random: () => Uint8Array): string;
export declare function backoffMs(
  attempt: number,
  options: { baseMs: number; maxMs: number; retryAfterS?: number | null; jitter?: () => number },
): number;
export declare function parseRetryAfter(value: string | null, nowMs?: number): number | null;
export declare function classifyStatus(status: number): 'done' | 'retry' | 'drop';
/** analytics.js's anonymous id on this page (localStorage first, then the cookie), or null. */
export declare function segmentAnonymousId(where: {
  storage?: Pick<Storage, 'getItem'> | null;
  cookie?: () => string;
}): string | null;
/** One cookie's (percent-decoded) value from a `document.cookie` string, or null. */
export declare function cookieValue(cookies: string, name: string): string | null;
