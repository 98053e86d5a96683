// The History page's charts, drawn as SVG from the JSON API: a temperature chart per Pi
// (min-max band and mean line) and a home/away/not-seen timeline per person. Axes in degrees
// Celsius and the browser's local time; hover, tap or arrow keys show the values.
// Every name from a Pi goes in with textContent, never as markup.
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const HOUR = 3600, DAY = 86400;
  const M = { top: 14, right: 14, bottom: 26, left: 50 };
  const TEMP_HEIGHT = 220;
  const ROW = 38;  // a presence row: the name above, the bar below

  function svgEl(name, attrs, parent) {
    const e = document.createElementNS(NS, name);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }

  function message(plot, cls, text) {
    plot.replaceChildren();
    const p = document.createElement("p");
    p.className = cls;
    p.textContent = text;
    plot.appendChild(p);
  }

  async function getJSON(path, params) {
    const response = await fetch(path + "?" + new URLSearchParams(params), {
      credentials: "same-origin", headers: { Accept: "application/json" },
    });
    if (response.status === 401) {
      window.location.assign("/login?next=/history");
      throw new Error("logged out");
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  // -- time axis, in the browser's local time ----------------------------------------

  const fmt = {
    hm: new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" }),
    wd: new Intl.DateTimeFormat(undefined, { weekday: "short" }),
    wdd: new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric" }),
    dm: new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short" }),
    m: new Intl.DateTimeFormat(undefined, { month: "short" }),
    my: new Intl.DateTimeFormat(undefined, { month: "short", year: "numeric" }),
    full: new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short",
                                               hour: "2-digit", minute: "2-digit" }),
    day: new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short",
                                              year: "numeric" }),
  };

  function timeTicks(start, end, width) {
    const want = Math.max(2, Math.floor(width / 80));
    const span = end - start;
    const steps = [HOUR, 2 * HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY];
    const step = steps.find(function (s) { return span / s <= want; });
    const ticks = [];
    if (step !== undefined) {
      const d = new Date(start * 1000);
      d.setHours(0, 0, 0, 0);
      if (step === 7 * DAY || step === 14 * DAY) d.setDate(d.getDate() - ((d.getDay() + 6) % 7));
      while (d.getTime() / 1000 <= end) {
        const t = d.getTime() / 1000;
        if (t >= start) ticks.push({ t: t, label: tickLabel(d, step) });
        if (step < DAY) d.setHours(d.getHours() + step / HOUR);
        else d.setDate(d.getDate() + step / DAY);
      }
      return ticks;
    }
    const months = [1, 2, 3, 6].find(function (m) { return span / (m * 30.4 * DAY) <= want + 1; }) || 12;
    const first = new Date(start * 1000);
    let d = new Date(first.getFullYear(), first.getMonth(), 1);
    while (d.getTime() / 1000 <= end) {
      if (d.getTime() / 1000 >= start && d.getMonth() % months === 0) {
        ticks.push({ t: d.getTime() / 1000, label: (d.getMonth() === 0 ? fmt.my : fmt.m).format(d) });
      }
      d = new Date(d.getFullYear(), d.getMonth() + 1, 1);
    }
    return ticks;
  }

  function tickLabel(d, step) {
    if (step < DAY) {
      return d.getHours() === 0 && d.getMinutes() === 0 ? fmt.wd.format(d) : fmt.hm.format(d);
    }
    return step < 7 * DAY ? fmt.wdd.format(d) : fmt.dm.format(d);
  }

  function when(t, coarse) {
    return (coarse ? fmt.day : fmt.full).format(new Date(t * 1000));
  }

  function xAxis(svg, ticks, x, top, bottom) {
    const g = svgEl("g", { class: "axis x" }, svg);
    for (const tick of ticks) {
      const px = x(tick.t);
      svgEl("line", { x1: px, x2: px, y1: top, y2: bottom }, g);
      const label = svgEl("text", { x: px, y: bottom + 16, "text-anchor": "middle" }, g);
      label.textContent = tick.label;
    }
  }

  // -- hover, tap and keys -----------------------------------------------------------

  function tooltip(plot) {
    const tip = document.createElement("div");
    tip.className = "tip";
    tip.hidden = true;
    plot.appendChild(tip);
    return {
      show: function (px, py, text) {
        tip.textContent = text;
        tip.hidden = false;
        const w = tip.offsetWidth, h = tip.offsetHeight, W = plot.clientWidth;
        const left = Math.max(0, Math.min(px + 12, W - w));
        const top = py - h - 8 < 0 ? py + 12 : py - h - 8;
        tip.style.transform = "translate(" + left + "px," + top + "px)";
      },
      hide: function () { tip.hidden = true; },
    };
  }

  // Calls pick(px, py) -> true if something is shown; hides on leave and Escape.
  function interactive(svg, pick, hide, step) {
    svg.setAttribute("tabindex", "0");
    function at(event) {
      const box = svg.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    }
    svg.addEventListener("pointermove", function (e) { if (!pick.apply(null, at(e))) hide(); });
    svg.addEventListener("pointerdown", function (e) { if (!pick.apply(null, at(e))) hide(); });
    svg.addEventListener("pointerleave", function (e) { if (e.pointerType === "mouse") hide(); });
    svg.addEventListener("blur", hide);
    svg.addEventListener("keydown", function (e) {
      if (e.key === "Escape") hide();
      else if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
        step(e.key === "ArrowLeft" ? -1 : 1);
        e.preventDefault();
      }
    });
  }

  // -- temperature -------------------------------------------------------------------

  function valueTicks(lo, hi) {
    if (hi - lo < 1) { const mid = (lo + hi) / 2; lo = mid - 0.5; hi = mid + 0.5; }
    const raw = (hi - lo) / 4;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map(function (m) { return m * mag; })
      .find(function (s) { return s >= raw; });
    const first = Math.floor(lo / step) * step, last = Math.ceil(hi / step) * step;
    const ticks = [];
    for (let v = first; v <= last + step / 2; v += step) ticks.push(Math.round(v * 100) / 100);
    // as many decimals as the step has (0.25 °C apart: 20.25, not a rounded 20.3)
    const digits = [0, 1, 2, 3].find(function (d) {
      const scaled = step * Math.pow(10, d);
      return Math.abs(Math.round(scaled) - scaled) < 1e-6;
    });
    return { lo: first, hi: last, ticks: ticks, digits: digits === undefined ? 2 : digits };
  }

  function segments(buckets) {
    // Runs of buckets, broken where readings stop for much longer than their usual
    // spacing (a Pi that was off) or where the simulated mark changes.
    const gaps = [];
    for (let i = 1; i < buckets.length; i++) gaps.push(buckets[i].start - buckets[i - 1].start);
    gaps.sort(function (a, b) { return a - b; });
    const usual = gaps.length ? gaps[Math.floor(gaps.length / 2)] : 0;
    const out = [];
    let current = [];
    for (const b of buckets) {
      const prev = current[current.length - 1];
      if (prev && (b.start - prev.start > Math.max(usual * 2.5, prev.end - prev.start) ||
                   b.simulated !== prev.simulated)) {
        out.push(current);
        current = [];
      }
      current.push(b);
    }
    if (current.length) out.push(current);
    return out;
  }

  function c(v, digits) { return v.toFixed(digits === undefined ? 1 : digits) + " °C"; }

  function drawTemperature(figure, plot, data) {
    const buckets = data.buckets;
    if (!buckets.length) {
      message(plot, "nodata", "No temperature recorded in this range.");
      figure.dataset.state = "empty";
      return;
    }
    const W = Math.max(plot.clientWidth, 200), H = TEMP_HEIGHT;
    const left = M.left, right = W - M.right, top = M.top, bottom = H - M.bottom;
    const ys = valueTicks(Math.min.apply(null, buckets.map(function (b) { return b.min; })),
                          Math.max.apply(null, buckets.map(function (b) { return b.max; })));
    const x = function (t) { return left + (t - data.start) / (data.end - data.start) * (right - left); };
    const y = function (v) { return bottom - (v - ys.lo) / (ys.hi - ys.lo) * (bottom - top); };
    const mid = function (b) { return (b.start + b.end) / 2; };
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
    svg.setAttribute("aria-label", "Temperature of " + data.device + " in °C, " +
                     c(Math.min.apply(null, buckets.map(function (b) { return b.min; }))) + " to " +
                     c(Math.max.apply(null, buckets.map(function (b) { return b.max; }))));
    const grid = svgEl("g", { class: "grid" }, svg);
    for (const v of ys.ticks) {
      svgEl("line", { x1: left, x2: right, y1: y(v), y2: y(v) }, grid);
      const label = svgEl("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, grid);
      label.textContent = c(v, ys.digits);
    }
    xAxis(svg, timeTicks(data.start, data.end, W), x, top, bottom);
    for (const seg of segments(buckets)) {
      const g = svgEl("g", { class: seg[0].simulated ? "data sim-data" : "data" }, svg);
      const half = Math.max(1.5, (x(seg[0].end) - x(seg[0].start)) / 2);
      const xs = seg.length === 1 ? [x(mid(seg[0])) - half, x(mid(seg[0])) + half] : null;
      let band = "", line = "";
      if (xs) {
        band = "M" + xs[0] + "," + y(seg[0].max) + "H" + xs[1] + "V" + y(seg[0].min) + "H" + xs[0] + "Z";
        line = "M" + xs[0] + "," + y(seg[0].mean) + "H" + xs[1];
      } else {
        band = seg.map(function (b, i) { return (i ? "L" : "M") + x(mid(b)).toFixed(1) + "," + y(b.max).toFixed(1); }).join("") +
          seg.slice().reverse().map(function (b) { return "L" + x(mid(b)).toFixed(1) + "," + y(b.min).toFixed(1); }).join("") + "Z";
        line = seg.map(function (b, i) { return (i ? "L" : "M") + x(mid(b)).toFixed(1) + "," + y(b.mean).toFixed(1); }).join("");
      }
      svgEl("path", { class: "band", d: band }, g);
      svgEl("path", { class: "mean", d: line }, g);
    }
    if (data.simulated) {
      const mark = svgEl("text", { class: "sim-mark", x: right - 4, y: top + 12, "text-anchor": "end" }, svg);
      mark.textContent = data.simulated === "demo" ? "DEMO DATA (invented)" : "SIMULATED DATA (invented)";
    }
    const cursor = svgEl("line", { class: "cursor", y1: top, y2: bottom, visibility: "hidden" }, svg);
    const dot = svgEl("circle", { class: "dot", r: 4, visibility: "hidden" }, svg);
    plot.replaceChildren(svg);
    const tip = tooltip(plot);
    const coarse = buckets[0].end - buckets[0].start >= DAY;
    let index = -1;
    function show(i) {
      index = i;
      const b = buckets[i], px = x(mid(b)), py = y(b.mean);
      cursor.setAttribute("x1", px); cursor.setAttribute("x2", px);
      cursor.setAttribute("visibility", "visible");
      dot.setAttribute("cx", px); dot.setAttribute("cy", py);
      dot.setAttribute("visibility", "visible");
      let text = when(b.start, coarse) + (coarse ? "" : " – " + fmt.hm.format(new Date(b.end * 1000))) +
        "\nmean " + c(b.mean) + "\nmin " + c(b.min) + " · max " + c(b.max);
      if (b.simulated) text += "\n" + b.simulated + " data (invented)";
      tip.show(px, py, text);
    }
    function hide() {
      index = -1;
      cursor.setAttribute("visibility", "hidden");
      dot.setAttribute("visibility", "hidden");
      tip.hide();
    }
    interactive(svg, function (px) {
      if (px < left - 10 || px > right + 10) return false;
      let best = 0;
      for (let i = 1; i < buckets.length; i++) {
        if (Math.abs(x(mid(buckets[i])) - px) < Math.abs(x(mid(buckets[best])) - px)) best = i;
      }
      show(best);
      return true;
    }, hide, function (delta) {
      show(Math.max(0, Math.min(buckets.length - 1, (index < 0 ? buckets.length : index) + delta)));
    });
    figure.dataset.state = "drawn";
  }

  // -- presence ----------------------------------------------------------------------

  function drawPresence(figure, plot, data) {
    if (!data.people.length) {
      message(plot, "nodata", "No presence recorded in this range.");
      figure.dataset.state = "empty";
      return;
    }
    const W = Math.max(plot.clientWidth, 200);
    const left = 8, right = W - 8, top = 4;
    const bottom = top + data.people.length * ROW, H = bottom + M.bottom;
    const x = function (t) { return left + (Math.min(Math.max(t, data.start), data.end) - data.start) / (data.end - data.start) * (right - left); };
    const svg = svgEl("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img" });
    svg.setAttribute("aria-label", "Home, away and not seen per person, local time");
    xAxis(svg, timeTicks(data.start, data.end, W), x, top, bottom);
    const rows = [];
    data.people.forEach(function (person, row) {
      const y0 = top + row * ROW;
      const g = svgEl("g", { class: "row" }, svg);
      const name = svgEl("text", { class: "person", x: left, y: y0 + 13 }, g);
      name.textContent = person.name + (person.simulated ? "  (" + person.simulated + " data)" : "");
      svgEl("rect", { class: "unknown", x: left, y: y0 + 17, width: right - left, height: 16, fill: "none",
                      stroke: "currentColor", "stroke-opacity": 0.25, "stroke-dasharray": "3 3" }, g);
      for (const iv of person.intervals) {
        const x0 = x(iv.start), x1 = x(iv.end === null ? data.end : iv.end);
        const cls = ({ home: "home", away: "away" }[iv.state] || "notseen") + (iv.simulated ? " sim" : "");
        svgEl("rect", { class: cls, x: x0, y: y0 + 17, width: Math.max(1, x1 - x0), height: 16 }, g);
      }
      rows.push({ person: person, y0: y0 });
    });
    plot.replaceChildren(svg);
    const tip = tooltip(plot);
    const cursor = svgEl("line", { class: "cursor", y1: top, y2: bottom, visibility: "hidden" }, svg);
    function hide() { cursor.setAttribute("visibility", "hidden"); tip.hide(); }
    let pointer = null;
    function pick(px, py) {
      const row = rows[Math.floor((py - top) / ROW)];
      if (!row || px < left || px > right) return false;
      pointer = [px, py];
      const t = data.start + (px - left) / (right - left) * (data.end - data.start);
      const iv = row.person.intervals.find(function (i) { return i.start <= t && (i.end === null || t < i.end); });
      let text = row.person.name + ": ";
      if (!iv) text += "no report";
      else {
        const end = iv.end === null ? "now" : when(iv.end);
        text += (iv.state === "unknown" ? "not seen (Pi offline)" : iv.state) + "\n" + when(iv.start) + " – " + end +
          " (" + window.homewatch.duration((iv.end === null ? Date.now() / 1000 : iv.end) - iv.start) + ")";
        if (iv.seen_by && iv.seen_by.length) text += "\nseen by " + iv.seen_by.join(", ");
        if (iv.unconfirmed_by && iv.unconfirmed_by.length) text += "\nlast seen home by " + iv.unconfirmed_by.join(", ");
        if (iv.simulated) text += "\n" + iv.simulated + " data (invented)";
      }
      cursor.setAttribute("x1", px); cursor.setAttribute("x2", px);
      cursor.setAttribute("visibility", "visible");
      tip.show(px, row.y0 + 17, text);
      return true;
    }
    interactive(svg, pick, hide, function (delta) {
      const p = pointer || [left, top + 20];
      const stepPx = (right - left) / 48;
      pick(Math.max(left, Math.min(right, p[0] + delta * stepPx)), p[1]);
    });
    figure.dataset.state = "drawn";
  }

  // -- loading and redrawing ---------------------------------------------------------

  const charts = [];

  async function load(figure) {
    const plot = figure.querySelector(".plot");
    const temperature = figure.classList.contains("temperature");
    try {
      const data = temperature
        ? await getJSON("/api/temperature", { device: figure.dataset.device, range: figure.dataset.range })
        : await getJSON("/api/presence", { range: figure.dataset.range });
      const draw = function () { (temperature ? drawTemperature : drawPresence)(figure, plot, data); };
      draw();
      charts.push({ plot: plot, width: plot.clientWidth, draw: draw });
    } catch (err) {
      message(plot, "nodata", "Could not load this chart (" + err.message + "). Reload the page to try again.");
      figure.dataset.state = "error";
    }
  }

  let pending = 0;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      for (const chart of charts) {
        if (chart.plot.clientWidth !== chart.width) {
          chart.width = chart.plot.clientWidth;
          chart.draw();
        }
      }
    }, 150);
  });

  for (const figure of document.querySelectorAll("figure.chart")) load(figure);
})();
