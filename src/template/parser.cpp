// Template source -> Program. Whitespace rules are those of the environment transformers renders chat
// templates in: trim_blocks and lstrip_blocks on, plus `{%-`/`-%}` style manual stripping.
#include <algorithm>
#include <initializer_list>
#include <cctype>
#include <set>

#include "core/error.h"
#include "template/ast.h"

namespace rill::jinja {

namespace {

[[noreturn]] void fail(int line, const std::string& what) {
  throw Error("chat template line " + std::to_string(line) + ": " + what);
}

const std::set<std::string> kFilters = {
    "trim", "tojson", "length", "count", "upper", "lower", "default", "d", "join", "replace", "first", "last",
    "list", "string", "int", "float", "abs", "capitalize", "title", "items", "dictsort", "map", "select", "reject",
    "selectattr", "rejectattr", "unique", "sort", "reverse", "round", "safe", "e", "escape", "indent", "min", "max",
    "sum"};
const std::set<std::string> kTests = {"defined", "undefined", "none", "string", "mapping", "iterable", "sequence",
                                      "number", "integer", "float", "boolean", "true", "false", "odd", "even",
                                      "divisibleby", "equalto", "eq", "ne", "lower", "upper", "callable", "in", "sameas",
                                      "gt", "lt", "ge", "le"};

struct Segment {
  enum Type { Text, Var, Block, Comment } type;
  std::string content;
  int line;
  bool strip_before = false, strip_after = false, keep_lstrip = false;
};

int count_lines(const std::string& s, size_t from, size_t to) { return int(std::count(s.begin() + long(from), s.begin() + long(to), '\n')); }

std::vector<Segment> split_segments(const std::string& src) {
  std::vector<Segment> segs;
  size_t pos = 0;
  int line = 1;
  while (pos < src.size()) {
    size_t open = pos;
    while ((open = src.find('{', open)) != std::string::npos && open + 1 < src.size() &&
           src[open + 1] != '{' && src[open + 1] != '%' && src[open + 1] != '#')
      ++open;
    if (open == std::string::npos || open + 1 >= src.size()) open = src.size();
    if (open > pos) segs.push_back({Segment::Text, src.substr(pos, open - pos), line});
    line += count_lines(src, pos, open);
    if (open >= src.size()) break;
    const char kind = src[open + 1];
    const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
    size_t i = open + 2;
    if (kind == '#') {
      i = src.find(close, i);
    } else {  // find the closer outside string literals
      char quote = 0;
      for (; i + 1 < src.size(); ++i) {
        if (quote) {
          if (src[i] == '\\') ++i;
          else if (src[i] == quote) quote = 0;
        } else if (src[i] == '\'' || src[i] == '"') {
          quote = src[i];
        } else if (src.compare(i, 2, close) == 0) {
          break;
        }
      }
      if (i + 1 >= src.size()) i = std::string::npos;
    }
    if (i == std::string::npos) fail(line, "unclosed '" + src.substr(open, 2) + "'");
    Segment s{kind == '{' ? Segment::Var : kind == '%' ? Segment::Block : Segment::Comment, src.substr(open + 2, i - open - 2), line};
    if (!s.content.empty() && s.content.front() == '-') s.strip_before = true, s.content.erase(0, 1);
    else if (!s.content.empty() && s.content.front() == '+') s.keep_lstrip = true, s.content.erase(0, 1);
    if (!s.content.empty() && s.content.back() == '-') s.strip_after = true, s.content.pop_back();
    else if (!s.content.empty() && s.content.back() == '+') s.content.pop_back();
    line += count_lines(src, open, i);
    // {% raw %} ... {% endraw %}: verbatim text.
    if (s.type == Segment::Block) {
      std::string c = s.content;
      c.erase(0, c.find_first_not_of(" \t\r\n"));
      c.erase(c.find_last_not_of(" \t\r\n") + 1);
      if (c == "raw") {
        size_t end = src.find("endraw", i);
        size_t tag = end == std::string::npos ? end : src.rfind("{%", end);
        if (tag == std::string::npos) fail(line, "{% raw %} without {% endraw %}");
        segs.push_back(s);
        segs.back().type = Segment::Comment;  // the raw tag itself outputs nothing
        segs.push_back({Segment::Text, src.substr(i + 2, tag - i - 2), line});
        line += count_lines(src, i, tag);
        i = src.find("%}", end);
        if (i == std::string::npos) fail(line, "unclosed {% endraw %}");
        pos = i + 2;
        continue;
      }
    }
    segs.push_back(std::move(s));
    pos = i + 2;
  }
  // Whitespace control.
  for (size_t k = 0; k < segs.size(); ++k) {
    Segment& s = segs[k];
    if (s.type == Segment::Text) continue;
    Segment* prev = k > 0 && segs[k - 1].type == Segment::Text ? &segs[k - 1] : nullptr;
    Segment* next = k + 1 < segs.size() && segs[k + 1].type == Segment::Text ? &segs[k + 1] : nullptr;
    if (prev && s.strip_before) {
      prev->content.erase(prev->content.find_last_not_of(" \t\r\n\f\v") + 1);
    } else if (prev && s.type != Segment::Var && !s.keep_lstrip) {  // lstrip_blocks
      const size_t nl = prev->content.find_last_of('\n');
      const size_t start = nl == std::string::npos ? 0 : nl + 1;
      const bool at_line_start = nl != std::string::npos || k == 1;
      if (at_line_start && prev->content.find_first_not_of(" \t", start) == std::string::npos) prev->content.erase(start);
    }
    if (next && s.strip_after) {
      next->content.erase(0, next->content.find_first_not_of(" \t\r\n\f\v"));
    } else if (next && s.type != Segment::Var) {  // trim_blocks
      if (next->content.compare(0, 1, "\n") == 0) next->content.erase(0, 1);
      else if (next->content.compare(0, 2, "\r\n") == 0) next->content.erase(0, 2);
    }
  }
  return segs;
}

struct Token {
  enum Type { Name, Int, Float, Str, Op, End } type;
  std::string text;
  Value value;
};

std::vector<Token> lex(const std::string& s, int line) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < s.size() && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      out.push_back({Token::Name, s.substr(i, j - i)});
      i = j;
    } else if (std::isdigit(static_cast<unsigned char>(c))) {
      size_t j = i;
      bool is_float = false;
      while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      if (j + 1 < s.size() && s[j] == '.' && std::isdigit(static_cast<unsigned char>(s[j + 1]))) {
        is_float = true;
        ++j;
        while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
      }
      if (j < s.size() && (s[j] == 'e' || s[j] == 'E')) {
        size_t k = j + 1;
        if (k < s.size() && (s[k] == '+' || s[k] == '-')) ++k;
        if (k < s.size() && std::isdigit(static_cast<unsigned char>(s[k]))) {
          is_float = true;
          j = k;
          while (j < s.size() && std::isdigit(static_cast<unsigned char>(s[j]))) ++j;
        }
      }
      std::string num = s.substr(i, j - i);
      num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
      Token t{is_float ? Token::Float : Token::Int, num};
      try {
        t.value = is_float ? Value::number(std::stod(num)) : Value::integer(std::stoll(num));
      } catch (const std::exception&) {
        fail(line, "bad number '" + num + "'");
      }
      out.push_back(t);
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string str;
      size_t j = i + 1;
      for (; j < s.size() && s[j] != c; ++j) {
        if (s[j] != '\\' || j + 1 >= s.size()) {
          str += s[j];
          continue;
        }
        static constexpr CharEscape kLiteral[] = {{'n', "\n"}, {'t', "\t"}, {'r', "\r"}, {'\\', "\\"},
                                                  {'\'', "'"},  {'"', "\""}};
        const char e = s[++j];
        if (e == '0') str += '\0';  // its text would end at the NUL
        else if (const char* u = escape_of(kLiteral, e)) str += u;
        else str += std::string("\\") + e;
      }
      if (j >= s.size()) fail(line, "unterminated string literal");
      out.push_back({Token::Str, str, Value::string(str)});
      i = j + 1;
    } else {
      static const char* ops[] = {"//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(",
                                  ")", "[", "]", "{", "}", ",", ".", ":", "|", "="};
      bool matched = false;
      for (const char* op : ops) {
        const size_t n = std::char_traits<char>::length(op);
        if (s.compare(i, n, op) == 0) {
          out.push_back({Token::Op, op});
          i += n;
          matched = true;
          break;
        }
      }
      if (!matched) fail(line, std::string("unexpected character '") + c + "'");
    }
  }
  out.push_back({Token::End, ""});
  return out;
}

class ExprParser {
 public:
  ExprParser(std::vector<Token> toks, int line) : t_(std::move(toks)), line_(line) {}

  ExprPtr expression() { return conditional(); }
  bool at_end() const { return t_[p_].type == Token::End; }
  const Token& peek(size_t k = 0) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  bool is(const char* op) const { return t_[p_].type == Token::Op && t_[p_].text == op; }
  bool is_name(const char* n) const { return t_[p_].type == Token::Name && t_[p_].text == n; }
  void expect(const char* op) {
    if (!is(op)) fail(line_, std::string("expected '") + op + "' but found '" + peek().text + "'");
    ++p_;
  }
  std::string name() {
    if (peek().type != Token::Name) fail(line_, "expected a name but found '" + peek().text + "'");
    return t_[p_++].text;
  }
  void expect_name(const char* n) {
    if (!is_name(n)) fail(line_, std::string("expected '") + n + "' but found '" + peek().text + "'");
    ++p_;
  }
  void expect_end() {
    if (!at_end()) fail(line_, "unexpected '" + peek().text + "'");
  }
  // `a` or `a, b` (for loop targets).
  std::vector<std::string> targets() {
    std::vector<std::string> names{name()};
    while (is(",")) {
      ++p_;
      names.push_back(name());
    }
    return names;
  }
  // An expression without the trailing `x if c else y` form (a for loop's iterable, before `if`).
  ExprPtr no_conditional() { return or_expr(); }

 private:
  ExprPtr make(Expr::Kind k) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line_;
    return e;
  }
  ExprPtr binary(std::string op, ExprPtr a, ExprPtr b) {
    auto e = make(Expr::Binary);
    e->op = std::move(op);
    e->a = std::move(a);
    e->b = std::move(b);
    return e;
  }

  ExprPtr conditional() {
    ExprPtr value = or_expr();
    while (is_name("if")) {
      ++p_;
      auto e = make(Expr::Conditional);
      e->a = or_expr();
      e->args.push_back(std::move(value));
      if (is_name("else")) {
        ++p_;
        e->args.push_back(conditional());
      } else {
        e->args.push_back(nullptr);
      }
      value = std::move(e);
    }
    return value;
  }
  ExprPtr or_expr() { return chain({"or"}, &ExprParser::and_expr, &ExprParser::is_name); }
  ExprPtr and_expr() { return chain({"and"}, &ExprParser::not_expr, &ExprParser::is_name); }
  ExprPtr not_expr() {
    if (is_name("not")) {
      ++p_;
      auto e = make(Expr::Unary);
      e->op = "not";
      e->a = not_expr();
      return e;
    }
    return compare();
  }
  ExprPtr compare() {
    ExprPtr l = math1();
    for (;;) {
      std::string op;
      if (is("==") || is("!=") || is("<") || is("<=") || is(">") || is(">=")) op = t_[p_++].text;
      else if (is_name("in")) op = "in", ++p_;
      else if (is_name("not") && peek(1).type == Token::Name && peek(1).text == "in") op = "notin", p_ += 2;
      else break;
      l = binary(op, std::move(l), math1());
    }
    return l;
  }
  // A left-associative chain of `next` joined by any of `ops` (operators, or with is_name, keywords).
  ExprPtr chain(std::initializer_list<const char*> ops, ExprPtr (ExprParser::*next)(),
                bool (ExprParser::*matches)(const char*) const = &ExprParser::is) {
    ExprPtr l = (this->*next)();
    for (;;) {
      const auto op = std::find_if(ops.begin(), ops.end(), [&](const char* o) { return (this->*matches)(o); });
      if (op == ops.end()) return l;
      ++p_;
      l = binary(*op, std::move(l), (this->*next)());
    }
  }
  ExprPtr math1() { return chain({"+", "-"}, &ExprParser::concat); }
  ExprPtr concat() { return chain({"~"}, &ExprParser::math2); }
  ExprPtr math2() { return chain({"*", "/", "//", "%"}, &ExprParser::power); }
  ExprPtr power() { return chain({"**"}, &ExprParser::unary); }
  ExprPtr unary() {
    struct Depth {
      int& d;
      int line;
      Depth(int& d, int line) : d(d), line(line) {
        if (++d > 200) fail(line, "expression nested too deeply");
      }
      ~Depth() { --d; }
    } guard(depth_, line_);
    if (is("-") || is("+")) {
      auto e = make(Expr::Unary);
      e->op = t_[p_++].text;
      e->a = unary();
      return e;
    }
    return filters(postfix(primary()));
  }
  void call_args(Expr& e) {
    expect("(");
    while (!is(")")) {
      if (peek().type == Token::Name && peek(1).type == Token::Op && peek(1).text == "=") {
        std::string k = name();
        ++p_;
        e.kwargs.emplace_back(k, expression());
      } else {
        e.args.push_back(expression());
      }
      if (!is(")")) expect(",");
    }
    expect(")");
  }
  ExprPtr filters(ExprPtr node) {
    for (;;) {
      if (is("|")) {
        ++p_;
        auto e = make(Expr::Filter);
        e->name = name();
        if (!kFilters.count(e->name)) fail(line_, "unsupported filter '" + e->name + "'");
        e->a = std::move(node);
        if (is("(")) call_args(*e);
        node = std::move(e);
      } else if (is_name("is")) {
        ++p_;
        auto e = make(Expr::Test);
        if (is_name("not")) e->negated = true, ++p_;
        e->name = is_name("none") || is_name("true") || is_name("false") ? t_[p_++].text : name();
        if (!kTests.count(e->name)) fail(line_, "unsupported test '" + e->name + "'");
        e->a = std::move(node);
        if (is("(")) call_args(*e);
        else if (peek().type != Token::End && peek().type != Token::Op && peek().type != Token::Name) e->args.push_back(primary());
        node = std::move(e);
      } else {
        return node;
      }
    }
  }
  ExprPtr postfix(ExprPtr node) {
    for (;;) {
      if (is(".")) {
        ++p_;
        auto e = make(Expr::Attr);
        if (peek().type == Token::Int) e->name = t_[p_++].text;  // x.0
        else e->name = name();
        e->a = std::move(node);
        node = std::move(e);
      } else if (is("[")) {
        ++p_;
        ExprPtr parts[3];
        int n = 0;
        bool slice = false;
        for (;;) {
          if (!is(":") && !is("]")) parts[n] = expression();
          if (is(":")) {
            slice = true;
            ++p_;
            if (++n > 2) fail(line_, "bad slice");
            continue;
          }
          break;
        }
        expect("]");
        auto e = make(slice ? Expr::Slice : Expr::Index);
        e->a = std::move(node);
        for (auto& p : parts) e->args.push_back(std::move(p));
        if (!slice && !e->args[0]) fail(line_, "empty subscript");
        node = std::move(e);
      } else if (is("(")) {
        auto e = make(Expr::Call);
        e->a = std::move(node);
        call_args(*e);
        node = std::move(e);
      } else {
        return node;
      }
    }
  }
  ExprPtr primary() {
    const Token& tk = peek();
    if (tk.type == Token::Int || tk.type == Token::Float) {
      auto e = make(Expr::Literal);
      e->value = t_[p_++].value;
      return e;
    }
    if (tk.type == Token::Str) {
      auto e = make(Expr::Literal);
      std::string s;
      while (peek().type == Token::Str) s += t_[p_++].text;  // adjacent literals concatenate
      e->value = Value::string(s);
      return e;
    }
    if (tk.type == Token::Name) {
      const std::string n = t_[p_++].text;
      auto e = make(Expr::Literal);
      if (n == "true" || n == "True") e->value = Value::boolean(true);
      else if (n == "false" || n == "False") e->value = Value::boolean(false);
      else if (n == "none" || n == "None") e->value = Value::none();
      else {
        e->kind = Expr::Name;
        e->name = n;
      }
      return e;
    }
    if (is("(")) {
      ++p_;
      ExprPtr first = expression();
      if (is(",")) {  // a tuple: treated as a list
        auto l = make(Expr::ListLit);
        l->args.push_back(std::move(first));
        while (is(",")) {
          ++p_;
          if (is(")")) break;
          l->args.push_back(expression());
        }
        expect(")");
        return l;
      }
      expect(")");
      return first;
    }
    // [a, b, ...] and {k: v, ...}: a dict literal's args are its keys and values in turn.
    for (const bool dict : {false, true}) {
      const char* close = dict ? "}" : "]";
      if (!is(dict ? "{" : "[")) continue;
      ++p_;
      auto lit = make(dict ? Expr::DictLit : Expr::ListLit);
      while (!is(close)) {
        lit->args.push_back(expression());
        if (dict) {
          expect(":");
          lit->args.push_back(expression());
        }
        if (!is(close)) expect(",");
      }
      expect(close);
      return lit;
    }
    fail(line_, tk.type == Token::End ? "unexpected end of expression" : "unexpected '" + tk.text + "'");
  }

  std::vector<Token> t_;
  size_t p_ = 0;
  int line_;
  int depth_ = 0;
};

class StmtParser {
 public:
  explicit StmtParser(std::vector<Segment> segs) : s_(std::move(segs)) {}

  // Parses until one of `ends` (a block keyword) or the end; returns the keyword that ended the body.
  std::string body(Body& out, const std::set<std::string>& ends, int open_line, const std::string& opener) {
    if (++nesting_ > 100) fail(open_line, "blocks nested too deeply");
    struct Leave {
      int& n;
      ~Leave() { --n; }
    } leave{nesting_};
    while (k_ < s_.size()) {
      Segment& seg = s_[k_++];
      switch (seg.type) {
        case Segment::Comment: break;
        case Segment::Text:
          if (!seg.content.empty()) {
            auto st = stmt(Stmt::Text, seg.line);
            st->text = seg.content;
            out.push_back(std::move(st));
          }
          break;
        case Segment::Var: {
          ExprParser p(lex(seg.content, seg.line), seg.line);
          auto st = stmt(Stmt::Output, seg.line);
          st->expr = p.expression();
          p.expect_end();
          out.push_back(std::move(st));
          break;
        }
        case Segment::Block: {
          ExprParser p(lex(seg.content, seg.line), seg.line);
          if (p.at_end()) fail(seg.line, "empty {% %} tag");
          const std::string kw = p.name();
          if (ends.count(kw)) {
            cur_ = std::make_unique<ExprParser>(std::move(p));
            return kw;
          }
          out.push_back(block(kw, p, seg.line));
          break;
        }
      }
    }
    if (!ends.empty()) fail(open_line, "{% " + opener + " %} is never closed");
    return "";
  }

 private:
  std::unique_ptr<Stmt> stmt(Stmt::Kind k, int line) {
    auto s = std::make_unique<Stmt>();
    s->kind = k;
    s->line = line;
    return s;
  }

  std::unique_ptr<Stmt> block(const std::string& kw, ExprParser& p, int line) {
    if (kw == "if") {
      auto st = stmt(Stmt::If, line);
      ExprPtr cond = p.expression();
      p.expect_end();
      for (;;) {
        Body b;
        const std::string end = body(b, {"elif", "else", "endif"}, line, "if");
        st->branches.emplace_back(std::move(cond), std::move(b));
        if (end == "endif") break;
        if (end == "elif") {
          cond = cur_->expression();
          cur_->expect_end();
        } else {
          cur_->expect_end();
          Body eb;
          body(eb, {"endif"}, line, "if");
          st->branches.emplace_back(nullptr, std::move(eb));
          break;
        }
      }
      return st;
    }
    if (kw == "for") {
      auto st = stmt(Stmt::For, line);
      st->targets = p.targets();
      p.expect_name("in");
      // The iterable stops before an inline `if` filter (parsed without the conditional operator).
      st->expr = p.no_conditional();
      if (p.is_name("if")) {
        p.expect_name("if");
        st->filter = p.expression();
      }
      if (p.is_name("recursive")) fail(line, "recursive loops are not supported");
      p.expect_end();
      const std::string end = body(st->body, {"else", "endfor"}, line, "for");
      if (end == "else") {
        cur_->expect_end();
        body(st->else_body, {"endfor"}, line, "for");
      }
      return st;
    }
    if (kw == "set") {
      std::string target = p.name();
      std::string attr;
      if (p.is(".")) {
        p.expect(".");
        attr = p.name();
      }
      if (p.at_end()) {  // {% set x %}...{% endset %}
        auto st = stmt(Stmt::SetBlock, line);
        st->targets = {target};
        body(st->body, {"endset"}, line, "set");
        return st;
      }
      auto st = stmt(Stmt::Set, line);
      st->targets = {target};
      if (p.is(",")) fail(line, "tuple assignment in {% set %} is not supported");
      st->attr = attr;
      p.expect("=");
      st->expr = p.expression();
      p.expect_end();
      return st;
    }
    if (kw == "macro") {
      auto st = stmt(Stmt::Macro, line);
      st->targets = {p.name()};
      p.expect("(");
      while (!p.is(")")) {
        std::string param = p.name();
        ExprPtr def;
        if (p.is("=")) {
          p.expect("=");
          def = p.expression();
        }
        st->params.emplace_back(param, std::move(def));
        if (!p.is(")")) p.expect(",");
      }
      p.expect(")");
      p.expect_end();
      body(st->body, {"endmacro"}, line, "macro");
      return st;
    }
    if (kw == "break" || kw == "continue") {
      p.expect_end();
      return stmt(kw == "break" ? Stmt::Break : Stmt::Continue, line);
    }
    fail(line, "unsupported statement '{% " + kw + " %}' (supported: if, for, set, macro, break, continue, raw)");
  }

  std::vector<Segment> s_;
  size_t k_ = 0;
  int nesting_ = 0;
  std::unique_ptr<ExprParser> cur_;  // the parser of the tag that ended the last body
};

}  // namespace

Program parse(const std::string& source) {
  Program prog;
  StmtParser p(split_segments(source));
  p.body(prog.body, {}, 1, "");
  return prog;
}

}  // namespace rill::jinja
