// A small Markdown renderer for model answers that builds DOM nodes and never parses HTML: every
// piece of the text becomes a text node, so markup in an answer (<img onerror=...>) shows as text.
// It covers what chat models write: paragraphs, headings, lists, quotes, rules, tables, fenced code
// (with a Copy button), inline code, bold, italics, strikethrough and http(s)/mailto links.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const BULLET = /^(\s*)([-*+])\s+(.*)$/;
const ORDERED = /^(\s*)(\d{1,9})[.)]\s+(.*)$/;
const TABLE_SEPARATOR = /^\s*\|?\s*:?-{1,}:?\s*(\|\s*:?-{1,}:?\s*)*\|?\s*$/;
const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

function el(tag, className, children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  for (const child of children || []) node.append(child);
  return node;
}

// ---- inline ----------------------------------------------------------------------------------

const INLINE = [
  { kind: "code", re: /(`+)([\s\S]*?[^`])\1(?!`)/ },
  { kind: "link", re: /!?\[([^\]\n]+)\]\(\s*<?([^\s)>]+)>?(?:\s+"[^"]*")?\s*\)/ },
  { kind: "auto", re: /\b(?:https?:\/\/|mailto:)[^\s<>"'`]*[^\s<>"'`.,:;!?)\]]/ },
  { kind: "strong", re: /\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w)/ },
  { kind: "del", re: /~~(?=\S)([\s\S]*?\S)~~/ },
  { kind: "em", re: /\*(?=[^\s*])([\s\S]*?[^\s*])\*|(?<!\w)_(?=[^\s_])([\s\S]*?[^\s_])_(?!\w)/ },
];

function link(text, href) {
  if (!SAFE_LINK.test(href)) return document.createTextNode(text);
  const a = el("a", "", [text]);
  a.href = href;
  a.rel = "noopener noreferrer nofollow";
  a.target = "_blank";
  return a;
}

export function renderInline(text) {
  const out = [];
  let rest = text;
  while (rest) {
    let best = null;
    for (const rule of INLINE) {
      const m = rule.re.exec(rest);
      if (m && (best === null || m.index < best.m.index)) best = { rule, m };
    }
    if (best === null) {
      out.push(document.createTextNode(rest));
      break;
    }
    const { rule, m } = best;
    if (m.index > 0) out.push(document.createTextNode(rest.slice(0, m.index)));
    if (rule.kind === "code") {
      out.push(el("code", "", [m[2].replace(/^ (.*) $/s, "$1")]));
    } else if (rule.kind === "link") {
      out.push(link(m[1], m[2]));
    } else if (rule.kind === "auto") {
      out.push(link(m[0], m[0]));
    } else {
      out.push(el(rule.kind, "", renderInline(m[1] ?? m[2])));
    }
    rest = rest.slice(m.index + m[0].length);
  }
  return out;
}

function inlineLines(lines) {
  // A single newline inside a paragraph is kept as a line break: chat answers mean it.
  const out = [];
  lines.forEach((line, i) => {
    if (i > 0) out.push(document.createElement("br"));
    out.push(...renderInline(line.trim()));
  });
  return out;
}

// ---- blocks ----------------------------------------------------------------------------------

function codeBlock(lang, body) {
  const code = el("code", "", [body]);
  if (lang) code.dataset.lang = lang;
  const copy = el("button", "copy", ["Copy"]);
  copy.type = "button";
  copy.setAttribute("aria-label", lang ? `Copy ${lang} code` : "Copy code");
  const head = el("div", "code-head", [el("span", "code-lang", [lang || "text"]), copy]);
  return el("div", "code-block", [head, el("pre", "", [code])]);
}

function splitRow(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  return row.split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function table(lines) {
  const head = splitRow(lines[0]);
  const aligns = splitRow(lines[1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
  const row = (cells, tag) =>
    el(
      "tr",
      "",
      head.map((_, i) => {
        const cell = el(tag, aligns[i] ? `align-${aligns[i]}` : "", renderInline(cells[i] ?? ""));
        return cell;
      }),
    );
  const thead = el("thead", "", [row(head, "th")]);
  const tbody = el("tbody", "", lines.slice(2).map((l) => row(splitRow(l), "td")));
  return el("div", "table-wrap", [el("table", "", [thead, tbody])]);
}

function list(lines, start) {
  // Items at the first item's indentation; deeper lines belong to the item above (nested lists).
  const first = BULLET.exec(lines[start]) || ORDERED.exec(lines[start]);
  const ordered = !BULLET.exec(lines[start]);
  const indent = first[1].length;
  const node = el(ordered ? "ol" : "ul");
  if (ordered && first[2] !== "1") node.start = Number(first[2]);
  const items = [];
  let i = start;
  let item = null;
  while (i < lines.length) {
    const line = lines[i];
    const m = ordered ? ORDERED.exec(line) : BULLET.exec(line);
    if (m && m[1].length === indent) {
      item = [m[3]];
      items.push(item);
      i++;
      continue;
    }
    const deeper = line.trim() !== "" && line.length - line.trimStart().length > indent;
    const continuation = line.trim() !== "" && !BULLET.exec(line) && !ORDERED.exec(line) && !startsBlock(line);
    if (item && (deeper || continuation)) {
      item.push(deeper ? line.slice(Math.min(indent + 2, line.length - line.trimStart().length)) : line);
      i++;
      continue;
    }
    if (line.trim() === "" && i + 1 < lines.length) {
      const next = lines[i + 1];
      const nm = ordered ? ORDERED.exec(next) : BULLET.exec(next);
      if ((nm && nm[1].length === indent) || (next.length - next.trimStart().length > indent && next.trim())) {
        i++;
        continue;
      }
    }
    break;
  }
  for (const itemLines of items) {
    const blocks = renderBlocks(itemLines);
    // A one-paragraph item is shown without the paragraph's margins.
    node.append(el("li", "", blocks.length === 1 && blocks[0].tagName === "P" ? [...blocks[0].childNodes] : blocks));
  }
  return { node, next: i };
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line);
}

function renderBlocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i++;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const marker = fence[1];
      const body = [];
      i++;
      // An unclosed fence (an answer still streaming) runs to the end.
      while (i < lines.length && !(lines[i].trim().startsWith(marker) && lines[i].trim().replace(/[`~]/g, "") === "")) {
        body.push(lines[i]);
        i++;
      }
      i++;
      out.push(codeBlock(fence[2], body.join("\n")));
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      out.push(el(`h${heading[1].length}`, "", renderInline(heading[2])));
      i++;
      continue;
    }
    if (RULE.test(line)) {
      out.push(el("hr"));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && lines[i].trim() !== "" && (QUOTE.test(lines[i]) || quoted.length)) {
        const m = QUOTE.exec(lines[i]);
        quoted.push(m ? m[1] : lines[i]);
        i++;
      }
      out.push(el("blockquote", "", renderBlocks(quoted)));
      continue;
    }
    if (BULLET.test(line) || ORDERED.test(line)) {
      const { node, next } = list(lines, i);
      out.push(node);
      i = next;
      continue;
    }
    if (line.includes("|") && i + 1 < lines.length && TABLE_SEPARATOR.test(lines[i + 1]) && lines[i + 1].includes("-")) {
      const rows = [line, lines[i + 1]];
      i += 2;
      while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") rows.push(lines[i++]);
      out.push(table(rows));
      continue;
    }
    const para = [];
    while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i]) && !(para.length && (BULLET.test(lines[i]) || ORDERED.test(lines[i])))) {
      para.push(lines[i]);
      i++;
    }
    out.push(el("p", "", inlineLines(para)));
  }
  return out;
}

/** The nodes for a Markdown text; none of them is ever made from the text as HTML. */
export function renderMarkdown(text) {
  return renderBlocks(String(text).replace(/\r\n?/g, "\n").split("\n"));
}
