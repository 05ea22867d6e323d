// The demo onboarding flow: every screen after sign-up is chosen by Onramp's /v1/decide, and
// every interaction is sent with the SDK. The panel shows the profile Onramp keeps for the user:
// before sign-up the anonymous visitor's; after, the user's, with the anonymous steps merged in.
import { init } from './sdk/onramp.js';

const STEPS = ['welcome', 'role', 'team_size', 'goals', 'integrations', 'invite_teammates', 'first_project'];
const TITLES = {
  signup: 'Sign up', welcome: 'Welcome', role: 'Role', team_size: 'Team', goals: 'Goals',
  integrations: 'Integrations', invite_teammates: 'Invite', first_project: 'Project', done: 'Done',
};
const SEGMENT_OF_ROLE = { founder: 'startup_founder', manager: 'smb_manager', admin: 'enterprise_admin', developer: 'developer' };
const CHECKLIST = {
  connect_integration: 'Connect an integration', invite_team: 'Invite your team', create_project: 'Create a project',
  import_data: 'Import your data', explore_templates: 'Explore templates',
};
const CHECKLIST_DONE_BY = { connect_integration: 'integrations', invite_team: 'invite_teammates', create_project: 'first_project' };

const params = new URLSearchParams(location.search);
const host = new URL('..', location.href).href.replace(/\/$/, '');
const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const state = { done: [], step: 'signup', viewedAt: 0, decisions: [], history: [], config: null, client: null };
window.onrampDemo = state; // for the browser tests and the curious

async function main() {
  const r = await fetch('config.json');
  if (!r.ok) {
    const body = await r.json().catch(() => ({}));
    $('#step').innerHTML = `<h1>Demo unavailable</h1><p class="error">${esc(body.message || r.status)}</p>`;
    return;
  }
  const config = (state.config = await r.json());
  const client = (state.client = init({
    host,
    writeKey: config.writeKey,
    decideKey: config.decideKey || '',
    readKey: config.readKey || '',
    flushIntervalMs: Number(params.get('flushMs') || 500),
    retryBaseMs: 300,
    retryMaxMs: 3000,
    decideTimeoutMs: Number(params.get('decideTimeoutMs') || config.decideTimeoutMs || 1500),
  }));
  client.on('sent', renderSdk);
  client.on('error', renderSdk);
  const saved = JSON.parse(sessionStorage.getItem('onramp-demo') || 'null');
  if (saved && client.userId) Object.assign(state, { done: saved.done, step: saved.step });
  client.page('Onboarding');
  setInterval(refreshProfile, 1500);
  show(state.step === 'done' ? 'done' : state.step);
}

/** A decision the page acted on (retries of a 422 are not shown: only what decided the page). */
function record(d) {
  state.decisions.push(d);
  renderPanel();
  return d;
}

function save() {
  sessionStorage.setItem('onramp-demo', JSON.stringify({ done: state.done, step: state.step }));
}

// -- the flow --------------------------------------------------------------------------------

async function show(step, decision = null) {
  state.step = step;
  state.viewedAt = Date.now();
  state.shownBy = decision;
  state.history.push({ step, decision, remaining: STEPS.filter((s) => !state.done.includes(s)) });
  save();
  renderProgress();
  const main = $('#step');
  // the sign-up screen is seen before identify, by an anonymous visitor: Onramp merges what it
  // did into the user's profile at sign-up (identity stitching; the panel shows `merged from`).
  // Not a Step Viewed: sign-up is not a step of the catalog (its stepId would be refused).
  if (step === 'signup') state.client.track('Sign Up Viewed');
  else if (step !== 'done') state.client.track('Step Viewed', { stepId: step });
  const html = await SCREENS[step]();
  main.innerHTML = html;
  main.dataset.decided = decision && !decision.fallback ? 'onramp' : decision ? `fallback:${decision.reason}` : 'fixed';
  main.dataset.step = step; // last: tests wait for it, and the screen is complete by then
  const form = main.querySelector('form');
  if (form) form.addEventListener('submit', (e) => (e.preventDefault(), complete(step, new FormData(form))));
  const focus = main.querySelector('input, select, textarea, button');
  if (focus) focus.focus();
}

async function complete(step, data) {
  const client = state.client;
  const answers = {};
  for (const [k, v] of data.entries()) answers[k] = answers[k] ? [].concat(answers[k], v) : v;
  if (step === 'signup') {
    const id = `demo-${crypto.randomUUID().slice(0, 8)}`;
    client.identify(id, { name: answers.name, email: answers.email, plan: 'starter' });
    client.track('Signed Up', { method: 'email' });
    await show('welcome');
    return;
  }
  if (step === 'role') client.identify(null, { role: answers.role, segment: SEGMENT_OF_ROLE[answers.role] });
  if (step === 'team_size') client.identify(null, { teamSize: answers.team_size });
  client.track('Step Completed', { stepId: step, durationMs: Date.now() - state.viewedAt, ...answers });
  state.done.push(step);
  const remaining = STEPS.filter((s) => !state.done.includes(s));
  if (!remaining.length) {
    client.track('Onboarding Completed', { steps: state.done.length });
    await show('done');
    return;
  }
  const decision = await nextStep(remaining);
  await show(decision.chosen, decision);
}

/** Ask Onramp which remaining step comes next. The profile may not have applied the completion
 * we just sent (a 422: the step it requires is not completed yet): flush and ask again, a few
 * times; the static order is the fallback whenever Onramp is slow, down or unsure. */
async function nextStep(remaining) {
  const client = state.client;
  let d;
  for (let attempt = 0; attempt < 8; attempt++) {
    await client.flush();
    d = await client.decide('next_step', { candidates: remaining, fallback: remaining[0], context: context() });
    if (d.reason !== 'http_422') break;
    await new Promise((r) => setTimeout(r, 400));
  }
  return record(d);
}

function context() {
  return { device: matchMedia('(max-width: 700px)').matches ? 'mobile' : 'desktop', locale: navigator.language };
}

function why(decision, what) {
  if (!decision) return '';
  if (decision.fallback) return `<p class="why">${what}: the static flow (Onramp answered ${esc(decision.reason)}).</p>`;
  const p = decision.propensity == null ? '' : `, p=${decision.propensity.toFixed(2)}`;
  return `<p class="why">${what}: chosen by Onramp (arm ${esc(decision.arm)}, model v${decision.modelVersion}${p}).</p>`;
}

function options(name, items, type = 'radio') {
  return items
    .map(([v, label], i) => `<label class="option"><input type="${type}" name="${name}" value="${v}" ${type === 'radio' && i === 0 ? 'checked' : ''}> ${label}</label>`)
    .join('');
}

const next = (label = 'Continue') => `<p><button type="submit">${label}</button></p>`;

const SCREENS = {
  async signup() {
    return `<h1>Create your Acme account</h1>
      <form><label>Name<input type="text" name="name" value="Ada Lovelace" required></label>
      <label>Work email<input type="email" name="email" value="ada@example.com" required></label>${next('Create account')}</form>`;
  },
  async welcome() {
    const d = record(await state.client.decide('welcome_content', { fallback: 'checklist_intro', context: context() }));
    const content = d.chosen || 'checklist_intro';
    $('#step').dataset.content = content;
    const lead = {
      video_tour: `<div class="hero" data-content="video_tour"><h2>Take the 2-minute tour</h2><div class="video">▶</div></div>`,
      checklist_intro: `<div class="hero" data-content="checklist_intro"><h2>Five steps to your first project</h2><p>We'll set up your workspace together; it takes about three minutes.</p></div>`,
      template_gallery: `<div class="hero" data-content="template_gallery"><h2>Start from a template</h2><div class="cards"><div>Sprint board</div><div>Roadmap</div><div>Bug tracker</div></div></div>`,
      talk_to_sales: `<div class="hero" data-content="talk_to_sales"><h2>Rolling out to a large team?</h2><p>Book 20 minutes with a solutions engineer.</p></div>`,
    }[content];
    return `<h1>Welcome, ${esc(state.client.userId)}</h1>${lead}<form>${next("Let's go")}</form>${why(d, 'This welcome')}`;
  },
  async role() {
    return `<h1>What's your role?</h1><form>${options('role', [['founder', 'Founder'], ['manager', 'Team manager'], ['admin', 'IT admin'], ['developer', 'Developer']])}${next()}</form>${why(state.shownBy, 'This step')}`;
  },
  async team_size() {
    return `<h1>How big is your team?</h1><form><select name="team_size"><option>1</option><option>2-10</option><option>11-50</option><option>51-200</option><option>200+</option></select>${next()}</form>${why(state.shownBy, 'This step')}`;
  },
  async goals() {
    return `<h1>What do you want to do first?</h1><form>${options('goals', [['plan', 'Plan work'], ['track', 'Track bugs'], ['report', 'Report progress']], 'checkbox')}${next()}</form>${why(state.shownBy, 'This step')}`;
  },
  async integrations() {
    return `<h1>Connect your tools</h1><form>${options('integrations', [['slack', 'Slack'], ['github', 'GitHub'], ['salesforce', 'Salesforce'], ['hubspot', 'HubSpot']], 'checkbox')}${next()}</form>${why(state.shownBy, 'This step')}`;
  },
  async invite_teammates() {
    return `<h1>Invite teammates</h1><form><label>Emails, one per line<textarea name="invites" rows="3">grace@example.com</textarea></label>${next('Send invites')}</form>${why(state.shownBy, 'This step')}`;
  },
  async first_project() {
    return `<h1>Create your first project</h1><form><label>Project name<input type="text" name="project" value="Launch plan" required></label>${next('Create project')}</form>${why(state.shownBy, 'This step')}`;
  },
  async done() {
    const d = record(await state.client.decide('checklist_order', { fallback: 'create_project', context: context() }));
    const order = [d.chosen, ...(d.ranked || []).map((r) => r.action), ...Object.keys(CHECKLIST)];
    const items = [...new Set(order.filter(Boolean))];
    $('#step').dataset.first = items[0];
    const li = items
      .map((k, i) => `<li data-item="${esc(k)}" class="${i === 0 ? 'first' : ''} ${state.done.includes(CHECKLIST_DONE_BY[k]) ? 'done' : ''}">${esc(CHECKLIST[k])}</li>`)
      .join('');
    return `<h1>You're all set</h1><p>Your checklist:</p><ul class="checklist">${li}</ul>${why(d, 'This order')}
      <form><button type="button" class="secondary" id="restart">Start over as a new user</button></form>`;
  },
};

document.addEventListener('click', (e) => {
  if (e.target && e.target.id === 'restart') {
    state.client.reset();
    sessionStorage.removeItem('onramp-demo');
    location.reload();
  }
});

// -- the panel -------------------------------------------------------------------------------

function renderProgress() {
  const all = ['signup', ...state.done, ...(STEPS.includes(state.step) && !state.done.includes(state.step) ? [state.step] : [])];
  if (state.step === 'done') all.push('done');
  $('#progress').innerHTML = all
    .map((s) => `<li class="${s === state.step ? 'current' : 'done'}">${TITLES[s]}</li>`)
    .join('');
}

function renderPanel() {
  const c = state.client;
  $('#ids').innerHTML = `<dt>userId</dt><dd id="user-id">${esc(c.userId || '—')}</dd><dt>anonymousId</dt><dd id="anonymous-id">${esc(c.anonymousId)}</dd><dt>session</dt><dd id="session-id">${esc(c.sessionId || '—')}</dd>`;
  $('#decisions').innerHTML = state.decisions
    .slice()
    .reverse()
    .map((d) => {
      const kind = d.fallback ? 'fallback' : d.policy === 'control' ? 'control' : 'model';
      const extra = d.fallback ? esc(d.reason) : `${esc(d.arm)} · v${d.modelVersion} · p=${(d.propensity ?? 0).toFixed(2)}${d.coldStart ? ' · cold' : ''}`;
      return `<li data-slot="${esc(d.slot)}"><b>${esc(d.slot)}</b> → ${esc(d.chosen ?? '—')} <span class="badge ${kind}">${kind}</span><br><span class="muted">${extra}</span></li>`;
    })
    .join('');
  renderSdk();
}

function renderSdk() {
  const s = state.client.stats();
  $('#sdk').textContent = `queued ${s.queued} · sent ${s.sent} · retries ${s.retries} · ${s.healthy ? 'collector reachable' : 'collector unreachable, queued in localStorage'}`;
}

async function refreshProfile() {
  const c = state.client;
  renderPanel();
  const user = c.userId || c.anonymousId;
  if (!state.config.readKey) {
    $('#profile').textContent = 'No read key for the demo: the profile is not shown.';
    return;
  }
  try {
    const r = await fetch(`${host}/v1/profiles/${encodeURIComponent(user)}`, { headers: { Authorization: `Bearer ${state.config.readKey}` } });
    const body = await r.json();
    if (r.status !== 200) {
      $('#profile').textContent = r.status === 404 ? 'No events applied yet.' : body.message || `HTTP ${r.status}`;
      return;
    }
    const p = body.profile;
    $('#freshness').textContent = body.freshness.ageMs == null ? '' : `(last event ${Math.round(body.freshness.ageMs / 100) / 10}s ago)`;
    const traits = Object.entries(p.traits).map(([k, v]) => `${esc(k)}=${esc(v)}`).join(', ');
    $('#profile').innerHTML = `<dl>
      <dt>profile of</dt><dd id="profile-key">${esc(p.userKey)}</dd>
      <dt>merged from</dt><dd id="profile-merged">${esc((p.mergedFrom || []).join(', ') || '—')}</dd>
      <dt>current step</dt><dd id="profile-current">${esc(p.currentStep || '—')}</dd>
      <dt>completed</dt><dd id="profile-completed">${esc(p.stepsCompleted.join(', ') || '—')}</dd>
      <dt>traits</dt><dd>${traits || '—'}</dd>
      <dt>events</dt><dd id="profile-events">${Object.values(p.counts).length ? esc(JSON.stringify(p.counts)) : '—'}</dd>
      <dt>sessions</dt><dd>${p.onboardingSessions.length}</dd>
      <dt>CRM</dt><dd>${body.enrichment && body.enrichment.found ? esc(JSON.stringify(body.enrichment)) : 'no match'}</dd></dl>`;
  } catch (err) {
    $('#profile').textContent = `Onramp unreachable (${err.message})`;
  }
}

main();
