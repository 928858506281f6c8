// The page of a kernel-side table: header clicks sort, the search box filters, the pager pages,
// a row click is sent back (the kernel opens that triplet). Only the shown page is in the page.
const CSS = `
.tspin-table-wrap{font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;color:var(--jp-ui-font-color1,#222)}
.tspin-table-bar{display:flex;gap:6px;align-items:center;margin:4px 0;flex-wrap:wrap}
.tspin-table-bar input{font-size:12px;padding:2px 6px;min-width:220px;background:var(--jp-layout-color1,#fff);color:var(--jp-ui-font-color1,#222);border:1px solid var(--jp-border-color1,#999);border-radius:3px}
.tspin-table-bar button{font-size:12px;padding:1px 8px;cursor:pointer;background:var(--jp-layout-color2,#eee);color:var(--jp-ui-font-color1,#222);border:1px solid var(--jp-border-color1,#999);border-radius:3px}
.tspin-table-bar button:disabled{opacity:.4;cursor:default}
table.tspin-table{border-collapse:collapse;font-family:var(--jp-code-font-family,monospace)}
table.tspin-table th{padding:2px 8px;border-bottom:2px solid var(--jp-border-color1,#999);cursor:pointer;user-select:none;white-space:nowrap;text-align:left}
table.tspin-table th.num, table.tspin-table td.num{text-align:right}
table.tspin-table td{padding:2px 8px;border-bottom:1px solid var(--jp-border-color2,#ddd);white-space:pre;max-width:240px;overflow:hidden;text-overflow:ellipsis}
table.tspin-table tbody tr{cursor:pointer}
table.tspin-table tbody tr:hover{background:var(--jp-layout-color2,rgba(99,102,241,.12))}
`;

export default {
  render({ model, el }) {
    const wrap = document.createElement("div");
    wrap.className = "tspin-table-wrap";
    const style = document.createElement("style");
    style.textContent = CSS;
    const bar = document.createElement("div");
    bar.className = "tspin-table-bar";
    const search = document.createElement("input");
    search.type = "search";
    search.className = "tspin-table-search";
    search.title = "text search over the table's text columns and ids: rows that contain every word (case-insensitive)";
    const mk = (label, cls, title) => { const b = document.createElement("button"); b.textContent = label; b.className = cls; b.title = title; return b; };
    const first = mk("«", "tspin-page-first", "first page");
    const prev = mk("‹", "tspin-page-prev", "previous page");
    const info = document.createElement("span");
    info.className = "tspin-page-info";
    const next = mk("›", "tspin-page-next", "next page");
    const last = mk("»", "tspin-page-last", "last page");
    bar.append(search, first, prev, info, next, last);
    const table = document.createElement("table");
    table.className = "tspin-table";
    const thead = document.createElement("thead");
    const tbody = document.createElement("tbody");
    table.append(thead, tbody);
    wrap.append(style, bar, table);
    el.appendChild(wrap);

    const setPage = p => { model.set("page", p); model.save_changes(); };
    const pages = () => Math.max(1, Math.ceil(model.get("n_matched") / Math.max(1, model.get("page_size"))));
    first.onclick = () => setPage(0);
    prev.onclick = () => setPage(Math.max(0, model.get("page") - 1));
    next.onclick = () => setPage(Math.min(pages() - 1, model.get("page") + 1));
    last.onclick = () => setPage(pages() - 1);
    let timer = null;
    search.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => { model.set("query", search.value); model.save_changes(); }, 200);
    });

    const drawHead = () => {
      const sortBy = model.get("sort_by"), desc = model.get("descending");
      const tr = document.createElement("tr");
      for (const h of model.get("headers")) {
        const th = document.createElement("th");
        th.dataset.key = h.key;
        if (h.numeric) th.className = "num";
        th.title = `sort by ${h.label} (click again to reverse)`;
        th.textContent = h.label + (h.key === sortBy ? (desc ? " ▼" : " ▲") : "");
        th.onclick = () => {
          if (model.get("sort_by") === h.key) model.set("descending", !model.get("descending"));
          else { model.set("sort_by", h.key); model.set("descending", false); }
          model.save_changes();
        };
        tr.appendChild(th);
      }
      thead.replaceChildren(tr);
    };
    const drawBody = () => {
      const numeric = model.get("headers").map(h => h.numeric);
      const frag = document.createDocumentFragment();
      for (const r of model.get("rows")) {
        const tr = document.createElement("tr");
        tr.dataset.key = String(r.key);
        r.cells.forEach((c, i) => {
          const td = document.createElement("td");
          if (numeric[i]) td.className = "num";
          td.textContent = c;
          td.title = c;
          tr.appendChild(td);
        });
        tr.onclick = () => model.send({ event: "row", key: r.key });
        frag.appendChild(tr);
      }
      tbody.replaceChildren(frag);
      const p = model.get("page"), n = pages();
      info.textContent = `page ${p + 1} of ${n} · ${model.get("n_matched").toLocaleString("en")} of ${model.get("n_total").toLocaleString("en")} rows`;
      first.disabled = prev.disabled = p <= 0;
      next.disabled = last.disabled = p >= n - 1;
      table.dataset.page = String(p);
      table.dataset.matched = String(model.get("n_matched"));
      table.dataset.sort = model.get("sort_by") + (model.get("descending") ? ":desc" : ":asc");
      table.dataset.query = model.get("query");
      table.dataset.revision = String(model.get("revision"));
      if (document.activeElement !== search && search.value !== model.get("query")) search.value = model.get("query");
    };
    const drawAll = () => {
      table.id = model.get("table_id") || "";
      search.placeholder = model.get("placeholder");
      drawHead();
      drawBody();
    };
    model.on("change:revision", drawAll);
    model.on("change:headers", drawHead);
    drawAll();
    return () => { model.off("change:revision", drawAll); model.off("change:headers", drawHead); clearTimeout(timer); };
  },
};
