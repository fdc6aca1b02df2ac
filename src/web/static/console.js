// The cedar console's only script: it keeps the page current by polling the JSON API every few
// seconds, draws the tiles x periods matrix, and shows an order's details on hover or click.
// Every value from the server is written with textContent or setAttribute, never as HTML.
'use strict';
(function () {
  const POLL_MS = 3000;
  // One letter per order state: the table of src/web/map.rs `code`.
  const STATES = { q: 'QUEUED', p: 'PENDING', r: 'RUNNING', x: 'CANCELLING', s: 'SUCCEEDED',
    d: 'DOWNLOADED', c: 'CLEANED', e: 'EMPTY', f: 'FAILED', n: 'CANCELLED', l: 'LOST' };
  const BAR = ['CLEANED', 'EMPTY', 'DOWNLOADED', 'SUCCEEDED', 'RUNNING', 'PENDING', 'CANCELLING',
    'FAILED', 'LOST', 'CANCELLED', 'QUEUED'];
  const SVG = 'http://www.w3.org/2000/svg';
  let polls = 0;

  function text(el, value) {
    if (el && el.textContent !== String(value)) el.textContent = String(value);
  }
  function el(tag, cls, content) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined) e.textContent = String(content);
    return e;
  }
  function fmtTime(t) {
    return t ? new Date(t).toISOString().slice(0, 16).replace('T', ' ') + ' UTC' : '—';
  }
  function fmtEecu(s) { return s == null ? '—' : (s / 3600).toFixed(2) + ' EECU-h'; }
  function fmtRate(r) { return r == null ? '—' : r.toFixed(1) + '/h'; }
  function countsText(c) {
    return BAR.filter((s) => s in c.counts).map((s) => s + '=' + c.counts[s]).join(' ');
  }
  function field(root, key) { return root.querySelector('[data-f="' + key + '"]'); }

  function setBar(svg, c) {
    const total = Math.max(c.total, 1);
    let x = 0;
    for (const rect of svg.querySelectorAll('rect')) {
      const w = (c.counts[rect.dataset.state] || 0) * 1000 / total;
      rect.setAttribute('x', x.toFixed(1));
      rect.setAttribute('width', w.toFixed(1));
      x += w;
    }
    text(svg.querySelector('title'), countsText(c));
  }
  function campaignFields(root, c) {
    text(field(root, 'counts'), countsText(c));
    text(field(root, 'finished'), (c.complete + c.failed) + ' / ' + c.total);
    text(field(root, 'active'), c.active);
    text(field(root, 'eecu'), fmtEecu(c.eecu_seconds));
    text(field(root, 'throughput'), fmtRate(c.throughput_per_hour));
    text(field(root, 'eta'), c.done ? 'done' : fmtTime(c.eta));
    const bar = root.querySelector('svg.bar');
    if (bar) setBar(bar, c);
  }
  async function getJson(url) {
    const r = await fetch(url, { headers: { Accept: 'application/json' } });
    if (!r.ok) throw new Error(url + ': HTTP ' + r.status);
    return r.json();
  }
  function poll(refresh) {
    const run = async () => {
      let ok = true;
      try { await refresh(); } catch (e) { ok = false; console.warn(e); }
      polls += 1;
      document.body.dataset.polls = String(polls);
      text(document.getElementById('updated'),
        ok ? 'updated ' + new Date().toLocaleTimeString() : 'update failed; retrying');
      setTimeout(run, POLL_MS);
    };
    return run;
  }

  // --- / : every campaign -----------------------------------------------------------------
  async function refreshCampaigns() {
    const o = await getJson('/api/v1/campaigns');
    const rows = Array.from(document.querySelectorAll('#campaigns tbody tr'));
    const same = rows.length === o.campaigns.length &&
      o.campaigns.every((c, i) => rows[i].dataset.name === c.name);
    if (!same) { location.reload(); return; }
    o.campaigns.forEach((c, i) => campaignFields(rows[i], c));
    text(field(document, 'ee.active'), o.ee.active);
    text(field(document, 'ee.admission_paused_until'), fmtTime(o.ee.admission_paused_until));
    const stages = Array.from(document.querySelectorAll('#stages tbody tr'));
    for (const s of o.stages) {
      const row = stages.find((r) => r.dataset.stage === s.stage);
      if (!row) continue;
      for (const k of ['backlog', 'due', 'scheduled', 'leased', 'dead']) text(field(row, k), s[k]);
      field(row, 'dead').classList.toggle('dead', s.dead > 0);
    }
    const dead = document.querySelector('#dead tbody');
    if (dead) {
      const rows = o.dead.map((d) => {
        const tr = el('tr');
        const job = el('td');
        job.appendChild(el('code', null, d.id));
        tr.append(el('td', null, d.stage), job, el('td', null, d.reason),
          el('td', null, d.attempts), el('td', 'error', d.last_error), el('td', null, fmtTime(d.at)));
        return tr;
      });
      dead.replaceChildren(...rows);
      const none = document.getElementById('dead-none');
      if (none) none.hidden = o.dead.length > 0;
    }
  }

  // --- /campaigns/NAME : one campaign on its map ------------------------------------------
  function campaignPage(meta) {
    const name = meta.dataset.name;
    const collection = meta.dataset.collection;
    const period = meta.dataset.period;
    const base = '/api/v1/campaigns/' + encodeURIComponent(name);
    const viewUrl = base + '/view?collection=' + encodeURIComponent(collection) +
      '&period=' + encodeURIComponent(period);
    const tiles = Array.from(document.querySelectorAll('#map rect.tile'));
    const tileLabels = Array.from(document.querySelectorAll('#matrix-rows li')).map((li) => li.textContent);
    const matrixSvg = document.getElementById('matrix');
    let matrix = null;
    let cellsDrawn = null;
    let shown = null; // the order whose details are shown: {collection, tile, period}

    function paintMap(codes) {
      const counts = {};
      tiles.forEach((r, i) => {
        const s = STATES[codes[i]] || 'QUEUED';
        counts[s] = (counts[s] || 0) + 1;
        if (r.dataset.state === s) return;
        r.dataset.state = s;
        r.setAttribute('class', 'tile st-' + s + (r.classList.contains('chosen') ? ' chosen' : ''));
        const t = r.querySelector('title');
        if (t) text(t, t.textContent.replace(/: [A-Z]+$/, ': ' + s));
      });
      for (const span of document.querySelectorAll('[data-legend]')) {
        text(span, counts[span.dataset.legend] ? '(' + counts[span.dataset.legend] + ')' : '');
      }
    }

    // One path per state, made of runs of equal cells along each tile's row: a campaign's
    // states come in runs, so this stays small where one rectangle per cell would not.
    function drawMatrix(m) {
      matrix = m;
      const cols = m.columns.length;
      const rows = cols ? m.cells.length / cols : 0;
      if (m.cells === cellsDrawn) return;
      cellsDrawn = m.cells;
      const d = {};
      for (let y = 0; y < rows; y++) {
        let x = 0;
        while (x < cols) {
          const c = m.cells[y * cols + x];
          let end = x + 1;
          while (end < cols && m.cells[y * cols + end] === c) end++;
          d[c] = (d[c] || '') + 'M' + x + ' ' + y + 'h' + (end - x) + 'v1h' + (x - end) + 'z';
          x = end;
        }
      }
      // Cells as square as the page allows: wide enough to hit, never wider than the page.
      const cell = Math.max(4, Math.min(28, Math.floor(1100 / Math.max(cols, 1))));
      const height = Math.max(3, Math.min(cell, Math.floor(2400 / Math.max(rows, 1))));
      matrixSvg.setAttribute('viewBox', '0 0 ' + Math.max(cols, 1) + ' ' + Math.max(rows, 1));
      matrixSvg.setAttribute('preserveAspectRatio', 'none');
      matrixSvg.setAttribute('width', String(cols * cell));
      matrixSvg.setAttribute('height', String(rows * height));
      const paths = [];
      for (const [c, path] of Object.entries(d)) {
        const p = document.createElementNS(SVG, 'path');
        const s = STATES[c] || 'QUEUED';
        p.setAttribute('class', 'st-' + s);
        p.setAttribute('data-state', s);
        p.setAttribute('d', path);
        paths.push(p);
      }
      matrixSvg.replaceChildren(...paths);
      const axes = document.getElementById('matrix-axes');
      if (cols && rows) {
        text(axes, 'Columns, left to right: ' + m.columns[0].label + ' … ' + m.columns[cols - 1].label +
          ' · rows, top to bottom: tile ' + tileLabels[0] + ' … ' + tileLabels[rows - 1] + ', as submitted');
      }
    }

    function paintFailures(failures) {
      const ul = document.getElementById('failures');
      if (!failures) return;
      const items = failures.map((f) => {
        const li = el('li');
        li.append(el('b', '', f.count + '×'), ' ', el('span', 'msg', f.message), ' ',
          el('span', 'examples', f.examples.join(', ')));
        return li;
      });
      if (!items.length) items.push(el('li', 'none', 'No failed orders.'));
      ul.replaceChildren(...items);
    }

    function showDetails(rows) {
      const dl = document.getElementById('details');
      const out = [];
      for (const [k, v] of rows) {
        if (v === undefined || v === null || v === '') continue;
        out.push(el('dt', '', k), el('dd', '', v));
      }
      dl.replaceChildren(...out);
    }

    async function details(order) {
      shown = order;
      const url = base + '/orders?collection=' + encodeURIComponent(order.collection) +
        '&tile=' + order.tile + '&period=' + encodeURIComponent(order.period) + '&limit=1';
      const page = await getJson(url);
      const o = page.orders[0];
      if (!o || shown !== order) return;
      const s = o.status;
      showDetails([
        ['order', o.name], ['state', s.state], ['collection', o.collection],
        ['tile', 'row ' + o.tile[0] + ', col ' + o.tile[1]],
        ['period', o.period.start + '..' + o.period.end], ['EE operation', s.operation],
        ['error', s.error], ['files', s.files], ['bytes', s.bytes], ['images', s.images],
        ['EECU-seconds', s.eecu_seconds], ['exports', s.exports], ['updated', s.updated],
      ]);
      const dl = document.getElementById('details');
      dl.dataset.order = o.name;
      dl.dataset.state = s.state;
    }

    function tileOrder(r) {
      return { collection, tile: r.dataset.row + ',' + r.dataset.col, period };
    }
    for (const r of tiles) {
      r.addEventListener('mouseenter', () => details(tileOrder(r)).catch(console.warn));
      r.addEventListener('click', () => {
        tiles.forEach((t) => t.classList.remove('chosen'));
        r.classList.add('chosen');
        details(tileOrder(r)).catch(console.warn);
      });
    }

    function cellAt(ev) {
      if (!matrix || !matrix.columns.length) return null;
      const box = matrixSvg.getBoundingClientRect();
      const cols = matrix.columns.length;
      const rows = matrix.cells.length / cols;
      const x = Math.floor((ev.clientX - box.left) / box.width * cols);
      const y = Math.floor((ev.clientY - box.top) / box.height * rows);
      if (x < 0 || y < 0 || x >= cols || y >= rows) return null;
      return { x, y, column: matrix.columns[x], state: STATES[matrix.cells[y * cols + x]] };
    }
    let hovered = null;
    matrixSvg.addEventListener('mousemove', (ev) => {
      const c = cellAt(ev);
      if (!c || hovered === c.y + ',' + c.x) return;
      hovered = c.y + ',' + c.x;
      matrixSvg.setAttribute('aria-label', tileLabels[c.y] + ' ' + c.column.label + ': ' + c.state);
      if (matrix.by_year) {
        showDetails([['tile', tileLabels[c.y]], ['year', c.column.label],
          ['periods', c.column.to - c.column.from], ['rolled up', c.state]]);
      } else {
        const tile = tiles[c.y].dataset.row + ',' + tiles[c.y].dataset.col;
        details({ collection, tile, period: c.column.first.start }).catch(console.warn);
      }
    });
    matrixSvg.addEventListener('click', (ev) => {
      const c = cellAt(ev);
      if (!c) return;
      const [row, col] = [tiles[c.y].dataset.row, tiles[c.y].dataset.col];
      if (matrix.by_year) {
        location.search = '?collection=' + encodeURIComponent(collection) +
          '&period=' + encodeURIComponent(c.column.first.start);
      } else {
        details({ collection, tile: row + ',' + col, period: c.column.first.start }).catch(console.warn);
      }
    });

    for (const b of document.querySelectorAll('button[data-action]')) {
      b.addEventListener('click', async () => {
        const action = b.dataset.action;
        const out = document.getElementById('action-result');
        if (action === 'cancel' && !window.confirm('Cancel ' + name + '?')) return;
        let token = sessionStorage.getItem('cedar-token');
        if (!token) token = window.prompt('The console token ([web] token):');
        if (!token) return;
        const r = await fetch(base + '/' + action, {
          method: 'POST', headers: { Authorization: 'Bearer ' + token },
        });
        const body = await r.json().catch(() => ({}));
        if (r.status === 401) sessionStorage.removeItem('cedar-token');
        else sessionStorage.setItem('cedar-token', token);
        text(out, r.ok ? action + ': ' + JSON.stringify(body) : (body.error || 'HTTP ' + r.status));
      });
    }

    return async function refresh() {
      const v = await getJson(viewUrl);
      campaignFields(document.querySelector('main'), v.campaign);
      paintMap(v.map);
      if (v.matrix) {
        drawMatrix(v.matrix);
        text(document.getElementById('matrix-note'), v.matrix.by_year
          ? 'One column per year, each cell its orders rolled up (any failed, else any in ' +
            'progress, else any queued, else complete). Click a cell to show its first period.'
          : '');
      }
      paintFailures(v.failures);
      if (shown) await details(shown);
    };
  }

  document.addEventListener('DOMContentLoaded', () => {
    const page = document.body.dataset.page;
    if (page === 'campaigns') {
      setTimeout(poll(refreshCampaigns), POLL_MS);
    } else if (page === 'campaign') {
      // The matrix is drawn by the script alone: refresh at once.
      poll(campaignPage(document.getElementById('campaign')))();
    }
  });
})();
