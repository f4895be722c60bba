// Evaluation of a parsed template: scopes, loops, macros, operators with Python semantics, and the
// filters, tests, methods and globals transformers' chat templates use.
#include <utf8proc.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <cmath>
#include <ctime>
#include <fstream>
#include <unordered_map>

#include "core/error.h"
#include "core/strings.h"
#include "formats/json_file.h"
#include "template/ast.h"
#include "template/chat_template.h"
#include "core/utf8.h"

namespace rill {
namespace jinja {
namespace {

using Kwargs = std::vector<std::pair<std::string, Value>>;

[[noreturn]] void fail(int line, const std::string& what) {
  throw Error("chat template line " + std::to_string(line) + ": " + what);
}

// Python's str.isspace() code points.
bool is_py_space(uint32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> cps;
  for (size_t i = 0; i < s.size();) cps.push_back(utf8::next(s, i));
  return cps;
}
std::string from_code_points(const std::vector<uint32_t>& cps, size_t b, size_t e) {
  std::string out;
  for (size_t k = b; k < e; ++k) utf8::append(out, cps[k]);
  return out;
}

std::string strip(const std::string& s, bool left, bool right, const Value* chars) {
  const auto cps = code_points(s);
  std::vector<uint32_t> set;
  if (chars && chars->kind == Value::String) set = code_points(chars->s);
  auto strippable = [&](uint32_t c) {
    return (chars && chars->kind == Value::String) ? std::find(set.begin(), set.end(), c) != set.end() : is_py_space(c);
  };
  size_t b = 0, e = cps.size();
  while (left && b < e && strippable(cps[b])) ++b;
  while (right && e > b && strippable(cps[e - 1])) --e;
  return from_code_points(cps, b, e);
}

std::string map_case(const std::string& s, int mode) {  // 0 lower, 1 upper, 2 title, 3 capitalize
  std::string out;
  bool prev_cased = false;
  size_t idx = 0;
  for (size_t i = 0; i < s.size(); ++idx) {
    const uint32_t c = utf8::next(s, i);
    uint32_t m;
    if (mode == 0) m = uint32_t(utf8proc_tolower(utf8proc_int32_t(c)));
    else if (mode == 1) m = uint32_t(utf8proc_toupper(utf8proc_int32_t(c)));
    else if (mode == 2) m = prev_cased ? uint32_t(utf8proc_tolower(utf8proc_int32_t(c))) : uint32_t(utf8proc_totitle(utf8proc_int32_t(c)));
    else m = idx == 0 ? uint32_t(utf8proc_totitle(utf8proc_int32_t(c))) : uint32_t(utf8proc_tolower(utf8proc_int32_t(c)));
    const auto cat = utf8proc_category(utf8proc_int32_t(c));
    prev_cased = cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL || cat == UTF8PROC_CATEGORY_LT;
    utf8::append(out, m);
  }
  return out;
}

std::vector<Value> iterate(const Value& v, int line) {
  switch (v.kind) {
    case Value::Undefined: return {};
    case Value::ListK: return *v.list;
    case Value::DictK: {
      std::vector<Value> keys;
      for (const auto& [k, _] : *v.dict) keys.push_back(Value::string(k));
      return keys;
    }
    case Value::String: {
      std::vector<Value> chars;
      for (uint32_t c : code_points(v.s)) {
        std::string ch;
        utf8::append(ch, c);
        chars.push_back(Value::string(ch));
      }
      return chars;
    }
    default: fail(line, "'" + type_name(v) + "' object is not iterable");
  }
}

const Value* kwarg(const Kwargs& kw, const char* name) {
  for (const auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}

Value arg(const std::vector<Value>& args, const Kwargs& kw, size_t i, const char* name, Value fallback = Value::undefined()) {
  if (i < args.size()) return args[i];
  if (const Value* v = kwarg(kw, name)) return *v;
  return fallback;
}

int compare(const Value& a, const Value& b, int line, const char* op) {
  if (a.is_number() && b.is_number()) return a.as_double() < b.as_double() ? -1 : a.as_double() > b.as_double() ? 1 : 0;
  if (a.kind == Value::String && b.kind == Value::String) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  fail(line, std::string("'") + op + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

class Renderer {
 public:
  Renderer(const nlohmann::ordered_json& context, std::string& out) : out_(out) {
    frames_.emplace_back();
    auto& g = frames_.back();
    g["raise_exception"] = Value::function([](std::vector<Value>& a, Kwargs&) -> Value {
      throw Error("chat template raised an exception: " + (a.empty() ? std::string() : to_str(a[0])));
    });
    g["namespace"] = Value::function([this](std::vector<Value>& a, Kwargs& kw) {
      Value ns = a.empty() || a[0].kind != Value::DictK ? Value::make_dict() : Value::make_dict(*a[0].dict);
      ns.is_namespace = true;
      namespaces_.push_back(ns.dict);
      for (auto& [k, v] : kw) ns.set(k, v);
      return ns;
    });
    g["dict"] = Value::function([](std::vector<Value>&, Kwargs& kw) { return Value::make_dict(Dict(kw.begin(), kw.end())); });
    g["range"] = Value::function([](std::vector<Value>& a, Kwargs&) {
      int64_t start = 0, stop = 0, step = 1;
      if (a.size() == 1) stop = a[0].i;
      if (a.size() >= 2) start = a[0].i, stop = a[1].i;
      if (a.size() >= 3) step = a[2].i;
      if (step == 0) throw Error("range() arg 3 must not be zero");
      List l;
      for (int64_t x = start; step > 0 ? x < stop : x > stop; x += step) {
        l.push_back(Value::integer(x));
        if (l.size() > 1000000) throw Error("range() too large");
      }
      return Value::make_list(std::move(l));
    });
    g["strftime_now"] = Value::function([](std::vector<Value>& a, Kwargs&) {
      const std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[256];
      const size_t n = std::strftime(buf, sizeof buf, a.empty() ? "%Y-%m-%d" : to_str(a[0]).c_str(), &tm);
      return Value::string(std::string(buf, n));
    });
    if (context.is_object())
      for (const auto& [k, v] : context.items()) g[k] = Value::from_json(v);
  }

  void run(const Body& body) {
    if (exec(body) != Flow::Normal) fail(0, "break/continue outside a loop");
  }

 private:
  enum class Flow { Normal, Break, Continue };
  using Frame = std::unordered_map<std::string, Value>;

  Value lookup(const std::string& name) const {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it)
      if (auto f = it->find(name); f != it->end()) return f->second;
    return Value::undefined("'" + name + "' is undefined");
  }

  Flow exec(const Body& body) {
    for (const auto& st : body) {
      const Flow f = exec(*st);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& st) {
    switch (st.kind) {
      case Stmt::Text: out_ += st.text; break;
      case Stmt::Output: {
        const Value v = eval(*st.expr);
        out_ += to_str(v);
        break;
      }
      case Stmt::If:
        for (const auto& [cond, body] : st.branches)
          if (!cond || eval(*cond).truthy()) return exec(body);
        break;
      case Stmt::For: return exec_for(st);
      case Stmt::Set: {
        Value v = eval(*st.expr);
        if (st.attr.empty()) {
          frames_.back()[st.targets[0]] = std::move(v);
        } else {
          Value ns = lookup(st.targets[0]);
          if (ns.kind != Value::DictK || !ns.is_namespace)
            fail(st.line, "cannot assign attribute on '" + type_name(ns) + "' (only on namespace())");
          ns.set(st.attr, std::move(v));
        }
        break;
      }
      case Stmt::SetBlock: {
        std::string captured;
        std::swap(captured, out_);
        exec(st.body);
        std::swap(captured, out_);
        frames_.back()[st.targets[0]] = Value::string(captured);
        break;
      }
      case Stmt::Macro: {
        const Stmt* def = &st;
        frames_.back()[st.targets[0]] = Value::function([this, def](std::vector<Value>& a, Kwargs& kw) { return call_macro(*def, a, kw); });
        break;
      }
      case Stmt::Break: return Flow::Break;
      case Stmt::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  Value call_macro(const Stmt& def, std::vector<Value>& args, Kwargs& kw) {
    if (++depth_ > 64) fail(def.line, "macro recursion too deep");
    Frame f;
    for (size_t k = 0; k < def.params.size(); ++k) {
      const auto& [name, dflt] = def.params[k];
      if (k < args.size()) f[name] = args[k];
      else if (const Value* v = kwarg(kw, name.c_str())) f[name] = *v;
      else f[name] = dflt ? eval(*dflt) : Value::undefined("'" + name + "' is undefined");
    }
    // A macro sees the template's globals and its own parameters, not the caller's locals.
    std::vector<Frame> saved(frames_.begin() + 1, frames_.end());
    frames_.resize(1);
    frames_.push_back(std::move(f));
    std::string captured;
    std::swap(captured, out_);
    exec(def.body);
    std::swap(captured, out_);
    frames_.resize(1);
    frames_.insert(frames_.end(), saved.begin(), saved.end());
    --depth_;
    return Value::string(captured);
  }

  Flow exec_for(const Stmt& st) {
    std::vector<Value> items = iterate(eval(*st.expr), st.line);
    frames_.emplace_back();
    if (st.filter) {
      std::vector<Value> kept;
      for (auto& it : items) {
        bind(st, it);
        if (eval(*st.filter).truthy()) kept.push_back(it);
      }
      items = std::move(kept);
    }
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; ++k) {
      bind(st, items[size_t(k)]);
      Value loop = Value::make_dict({{"index", Value::integer(k + 1)},
                                     {"index0", Value::integer(k)},
                                     {"revindex", Value::integer(n - k)},
                                     {"revindex0", Value::integer(n - k - 1)},
                                     {"first", Value::boolean(k == 0)},
                                     {"last", Value::boolean(k == n - 1)},
                                     {"length", Value::integer(n)},
                                     {"previtem", k > 0 ? items[size_t(k - 1)] : Value::undefined("no previous item")},
                                     {"nextitem", k + 1 < n ? items[size_t(k + 1)] : Value::undefined("no next item")}});
      loop.set("cycle", Value::function([k](std::vector<Value>& a, Kwargs&) {
        return a.empty() ? Value::undefined() : a[size_t(k) % a.size()];
      }));
      frames_.back()["loop"] = loop;
      if (exec(st.body) == Flow::Break) break;
    }
    frames_.pop_back();
    if (n == 0 && !st.else_body.empty()) return exec(st.else_body);
    return Flow::Normal;
  }

  void bind(const Stmt& st, const Value& item) {
    if (st.targets.size() == 1) {
      frames_.back()[st.targets[0]] = item;
      return;
    }
    const std::vector<Value> parts = iterate(item, st.line);
    if (parts.size() != st.targets.size())
      fail(st.line, "cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(st.targets.size()));
    for (size_t k = 0; k < parts.size(); ++k) frames_.back()[st.targets[k]] = parts[k];
  }

  static void require_defined(const Value& v, int line) {
    if (!v.defined()) fail(line, v.s.empty() ? "value is undefined" : v.s);
  }

  Value attribute(const Value& obj, const std::string& name, int line) {
    require_defined(obj, line);
    if (obj.kind == Value::DictK) {
      if (const Value* v = obj.find(name)) return *v;
      if (!obj.is_namespace && (name == "items" || name == "keys" || name == "values" || name == "get"))
        return method(obj, name, line);
      return Value::undefined("'dict object' has no attribute '" + name + "'");
    }
    if (obj.kind == Value::String || obj.kind == Value::ListK) return method(obj, name, line);
    if (obj.kind == Value::None) return Value::undefined("'None' has no attribute '" + name + "'");
    return Value::undefined("'" + type_name(obj) + " object' has no attribute '" + name + "'");
  }

  Value method(const Value& self, const std::string& name, int line) {
    static const char* kStr[] = {"strip", "lstrip", "rstrip", "startswith", "endswith", "split", "title", "upper", "lower",
                                 "capitalize", "replace", "find", "count", "join", "isdigit", "isalpha", "isspace"};
    static const char* kDict[] = {"items", "keys", "values", "get"};
    bool ok = false;
    if (self.kind == Value::String) ok = std::find(std::begin(kStr), std::end(kStr), name) != std::end(kStr);
    if (self.kind == Value::DictK) ok = std::find(std::begin(kDict), std::end(kDict), name) != std::end(kDict);
    if (!ok) return Value::undefined("'" + type_name(self) + " object' has no attribute '" + name + "'");
    return Value::function([self, name, line](std::vector<Value>& a, Kwargs& kw) -> Value {
      if (self.kind == Value::DictK) {
        if (name == "get") {
          const Value* v = a.empty() ? nullptr : self.find(to_str(a[0]));
          return v ? *v : (a.size() > 1 ? a[1] : Value::none());
        }
        List out;
        for (const auto& [k, v] : *self.dict) {
          if (name == "items") out.push_back(Value::make_list({Value::string(k), v}));
          else out.push_back(name == "keys" ? Value::string(k) : v);
        }
        return Value::make_list(std::move(out));
      }
      const std::string& s = self.s;
      const Value x = a.empty() ? Value::undefined() : a[0];
      if (name == "strip" || name == "lstrip" || name == "rstrip")
        return Value::string(strip(s, name != "rstrip", name != "lstrip", a.empty() || x.kind == Value::None ? nullptr : &x));
      if (name == "startswith" || name == "endswith") {
        std::vector<Value> opts = x.kind == Value::ListK ? *x.list : std::vector<Value>{x};
        for (const auto& o : opts) {
          if (o.kind != Value::String) fail(line, name + "() argument must be str");
          const bool hit = name == "startswith" ? s.compare(0, o.s.size(), o.s) == 0
                                                : s.size() >= o.s.size() && s.compare(s.size() - o.s.size(), o.s.size(), o.s) == 0;
          if (hit) return Value::boolean(true);
        }
        return Value::boolean(false);
      }
      if (name == "split") {
        const Value sep = arg(a, kw, 0, "sep", Value::none());
        const int64_t maxsplit = arg(a, kw, 1, "maxsplit", Value::integer(-1)).i;
        List parts;
        if (sep.kind == Value::None || !sep.defined()) {  // runs of whitespace
          const auto cps = code_points(s);
          size_t k = 0;
          int64_t splits = 0;
          while (k < cps.size()) {
            while (k < cps.size() && is_py_space(cps[k])) ++k;
            if (k >= cps.size()) break;
            size_t e = k;
            if (maxsplit >= 0 && splits >= maxsplit) e = cps.size();
            else
              while (e < cps.size() && !is_py_space(cps[e])) ++e;
            std::string piece = from_code_points(cps, k, e);
            if (e == cps.size()) piece = strip(piece, false, true, nullptr);
            parts.push_back(Value::string(piece));
            ++splits;
            k = e;
          }
        } else {
          if (sep.s.empty()) fail(line, "empty separator");
          size_t pos = 0, hit;
          int64_t splits = 0;
          while ((maxsplit < 0 || splits < maxsplit) && (hit = s.find(sep.s, pos)) != std::string::npos) {
            parts.push_back(Value::string(s.substr(pos, hit - pos)));
            pos = hit + sep.s.size();
            ++splits;
          }
          parts.push_back(Value::string(s.substr(pos)));
        }
        return Value::make_list(std::move(parts));
      }
      if (name == "title") return Value::string(map_case(s, 2));
      if (name == "upper") return Value::string(map_case(s, 1));
      if (name == "lower") return Value::string(map_case(s, 0));
      if (name == "capitalize") return Value::string(map_case(s, 3));
      if (name == "replace")
        return Value::string(replace_all(s, to_str(x), a.size() > 1 ? to_str(a[1]) : "", a.size() > 2 ? a[2].i : -1));
      if (name == "find") {
        const size_t p = s.find(to_str(x));
        return Value::integer(p == std::string::npos ? -1 : int64_t(code_points(s.substr(0, p)).size()));
      }
      if (name == "count") {
        const std::string sub = to_str(x);
        int64_t n = 0;
        for (size_t p = 0; !sub.empty() && (p = s.find(sub, p)) != std::string::npos; p += sub.size()) ++n;
        return Value::integer(n);
      }
      if (name == "join") {
        std::string out;
        const auto items = iterate(x, line);
        for (size_t k = 0; k < items.size(); ++k) out += (k ? s : "") + to_str(items[k]);
        return Value::string(out);
      }
      bool all = !s.empty();
      for (uint32_t c : code_points(s)) {
        const auto cat = utf8proc_category(utf8proc_int32_t(c));
        if (name == "isdigit") all &= cat == UTF8PROC_CATEGORY_ND;
        if (name == "isalpha") all &= cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO;
        if (name == "isspace") all &= is_py_space(c);
      }
      return Value::boolean(all);
    });
  }

  Value index(const Value& obj, const Value& key, int line) {
    require_defined(obj, line);
    if (obj.kind == Value::ListK || obj.kind == Value::String) {
      if (key.kind != Value::Int && key.kind != Value::Bool)
        return obj.kind == Value::String && key.kind == Value::String ? attribute(obj, key.s, line)
                                                                       : Value::undefined("bad index");
      if (obj.kind == Value::ListK) {
        int64_t k = key.i, n = int64_t(obj.list->size());
        if (k < 0) k += n;
        return k >= 0 && k < n ? (*obj.list)[size_t(k)] : Value::undefined("list index out of range");
      }
      const auto cps = code_points(obj.s);
      int64_t k = key.i, n = int64_t(cps.size());
      if (k < 0) k += n;
      return k >= 0 && k < n ? Value::string(from_code_points(cps, size_t(k), size_t(k) + 1)) : Value::undefined("string index out of range");
    }
    if (obj.kind == Value::DictK) {
      if (key.kind != Value::String) return Value::undefined("'dict object' has no attribute '" + to_str(key) + "'");
      return attribute(obj, key.s, line);
    }
    if (obj.kind == Value::None) return Value::undefined("'None' has no attribute '" + to_str(key) + "'");
    return Value::undefined("'" + type_name(obj) + " object' is not subscriptable");
  }

  Value slice(const Value& obj, const Expr& e) {
    require_defined(obj, e.line);
    std::vector<Value> items;
    if (obj.kind == Value::ListK) items = *obj.list;
    else if (obj.kind == Value::String) items = iterate(obj, e.line);
    else fail(e.line, "'" + type_name(obj) + "' object is not sliceable");
    const int64_t n = int64_t(items.size());
    auto part = [&](int k) -> std::optional<int64_t> {
      if (!e.args[size_t(k)]) return std::nullopt;
      const Value v = eval(*e.args[size_t(k)]);
      if (v.kind == Value::None) return std::nullopt;
      if (v.kind != Value::Int) fail(e.line, "slice indices must be integers");
      return v.i;
    };
    const int64_t step = part(2).value_or(1);
    if (step == 0) fail(e.line, "slice step cannot be zero");
    auto clamp = [&](std::optional<int64_t> v, int64_t dflt) {
      if (!v) return dflt;
      int64_t x = *v < 0 ? *v + n : *v;
      return step > 0 ? std::clamp<int64_t>(x, 0, n) : std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t start = clamp(part(0), step > 0 ? 0 : n - 1), stop = clamp(part(1), step > 0 ? n : -1);
    List out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) out.push_back(items[size_t(k)]);
    if (obj.kind == Value::String) {
      std::string s;
      for (const auto& c : out) s += c.s;
      return Value::string(s);
    }
    return Value::make_list(std::move(out));
  }

  bool test(const std::string& name, const Value& v, const std::vector<Value>& a, int line) {
    const Value x = a.empty() ? Value::undefined() : a[0];
    if (name == "defined") return v.defined();
    if (name == "undefined") return !v.defined();
    if (name == "none") return v.kind == Value::None;
    if (name == "string") return v.kind == Value::String;
    if (name == "mapping") return v.kind == Value::DictK;
    if (name == "iterable" || name == "sequence") return v.kind == Value::ListK || v.kind == Value::DictK || v.kind == Value::String;
    if (name == "number") return v.is_number();
    if (name == "integer") return v.kind == Value::Int;
    if (name == "float") return v.kind == Value::Float;
    if (name == "boolean") return v.kind == Value::Bool;
    if (name == "true") return v.kind == Value::Bool && v.b;
    if (name == "false") return v.kind == Value::Bool && !v.b;
    if (name == "callable") return v.kind == Value::FunctionK;
    if (name == "odd" || name == "even" || name == "divisibleby") {
      if (v.kind != Value::Int) fail(line, "test '" + name + "' needs an integer");
      if (name == "divisibleby") return x.kind == Value::Int && x.i != 0 && v.i % x.i == 0;
      return (((v.i % 2) + 2) % 2 == 1) == (name == "odd");
    }
    if (name == "equalto" || name == "eq" || name == "sameas") return equals(v, x);
    if (name == "ne") return !equals(v, x);
    if (name == "lower") return v.kind == Value::String && map_case(v.s, 0) == v.s;
    if (name == "upper") return v.kind == Value::String && map_case(v.s, 1) == v.s;
    if (name == "in") return contains(x, v, line);
    if (name == "gt") return compare(v, x, line, ">") > 0;
    if (name == "lt") return compare(v, x, line, "<") < 0;
    if (name == "ge") return compare(v, x, line, ">=") >= 0;
    if (name == "le") return compare(v, x, line, "<=") <= 0;
    fail(line, "unsupported test '" + name + "'");
  }

  bool contains(const Value& container, const Value& item, int line) {
    switch (container.kind) {
      case Value::String:
        if (item.kind != Value::String) fail(line, "'in <string>' requires string as left operand, not " + type_name(item));
        return container.s.find(item.s) != std::string::npos;
      case Value::ListK:
        return std::any_of(container.list->begin(), container.list->end(), [&](const Value& v) { return equals(v, item); });
      case Value::DictK: return item.kind == Value::String && container.find(item.s) != nullptr;
      case Value::Undefined:
        require_defined(container, line);  // throws
        [[fallthrough]];
      default: fail(line, "argument of type '" + type_name(container) + "' is not iterable");
    }
  }

  Value filter(const Expr& e) {
    const Value v = eval(*e.a);
    std::vector<Value> a;
    Kwargs kw;
    for (const auto& x : e.args) a.push_back(eval(*x));
    for (const auto& [k, x] : e.kwargs) kw.emplace_back(k, eval(*x));
    const std::string& f = e.name;
    const int line = e.line;
    if (f == "default" || f == "d") {
      const bool boolean = arg(a, kw, 1, "boolean", Value::boolean(false)).truthy();
      return (!v.defined() || (boolean && !v.truthy())) ? arg(a, kw, 0, "default_value", Value::string("")) : v;
    }
    if (f == "length" || f == "count") {
      if (v.kind == Value::String) return Value::integer(int64_t(code_points(v.s).size()));
      if (v.kind == Value::ListK) return Value::integer(int64_t(v.list->size()));
      if (v.kind == Value::DictK) return Value::integer(int64_t(v.dict->size()));
      if (!v.defined()) return Value::integer(0);
      fail(line, "object of type '" + type_name(v) + "' has no len()");
    }
    if (f == "safe") return v;
    if (f == "string") return Value::string(to_str(v));
    if (f == "tojson") {
      const Value ind = arg(a, kw, 0, "indent", Value::none());
      try {
        return Value::string(to_json(v, ind.kind == Value::Int ? int(ind.i) : -1));
      } catch (const Error& err) {
        fail(line, err.what());
      }
    }
    if (f == "items") {
      if (v.kind != Value::DictK) fail(line, "items filter needs a mapping");
      List out;
      for (const auto& [k, x] : *v.dict) out.push_back(Value::make_list({Value::string(k), x}));
      return Value::make_list(std::move(out));
    }
    if (f == "dictsort") {
      if (v.kind != Value::DictK) fail(line, "dictsort filter needs a mapping");
      Dict d = *v.dict;
      std::stable_sort(d.begin(), d.end(), [](const auto& x, const auto& y) { return map_case(x.first, 0) < map_case(y.first, 0); });
      List out;
      for (const auto& [k, x] : d) out.push_back(Value::make_list({Value::string(k), x}));
      return Value::make_list(std::move(out));
    }
    if (f == "list") return Value::make_list(iterate(v, line));
    if (f == "first" || f == "last") {
      const auto items = iterate(v, line);
      if (items.empty()) return Value::undefined("sequence is empty");
      return f == "first" ? items.front() : items.back();
    }
    if (f == "reverse") {
      auto items = iterate(v, line);
      std::reverse(items.begin(), items.end());
      if (v.kind == Value::String) {
        std::string s;
        for (const auto& c : items) s += c.s;
        return Value::string(s);
      }
      return Value::make_list(std::move(items));
    }
    if (f == "join") {
      const Value attr = arg(a, kw, 1, "attribute", Value::none());
      std::string sep = a.empty() && !kwarg(kw, "d") ? "" : to_str(arg(a, kw, 0, "d", Value::string("")));
      std::string out;
      const auto items = iterate(v, line);
      for (size_t k = 0; k < items.size(); ++k)
        out += (k ? sep : "") + to_str(attr.kind == Value::None ? items[k] : attribute(items[k], to_str(attr), line));
      return Value::string(out);
    }
    if (f == "unique") {
      List out;
      for (const auto& x : iterate(v, line))
        if (std::none_of(out.begin(), out.end(), [&](const Value& y) { return equals(x, y); })) out.push_back(x);
      return Value::make_list(std::move(out));
    }
    if (f == "sort") {
      auto items = iterate(v, line);
      const bool reverse = arg(a, kw, 0, "reverse", Value::boolean(false)).truthy();
      const Value attr = arg(a, kw, 2, "attribute", Value::none());
      auto key = [&](const Value& x) { return attr.kind == Value::None ? x : attribute(x, to_str(attr), line); };
      std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
        const int c = compare(key(x), key(y), line, "<");
        return reverse ? c > 0 : c < 0;
      });
      return Value::make_list(std::move(items));
    }
    if (f == "map" || f == "select" || f == "reject" || f == "selectattr" || f == "rejectattr") {
      List out;
      for (const auto& x : iterate(v, line)) {
        if (f == "map") {
          if (const Value* at = kwarg(kw, "attribute")) out.push_back(attribute(x, to_str(*at), line));
          else fail(line, "map() is supported with attribute= only");
          continue;
        }
        const bool by_attr = f == "selectattr" || f == "rejectattr";
        const Value subject = by_attr ? attribute(x, a.empty() ? "" : to_str(a[0]), line) : x;
        const size_t t = by_attr ? 1 : 0;
        bool keep;
        if (a.size() <= t) keep = subject.truthy();
        else keep = test(to_str(a[t]), subject, std::vector<Value>(a.begin() + long(t) + 1, a.end()), line);
        if (keep == (f == "select" || f == "selectattr")) out.push_back(x);
      }
      return Value::make_list(std::move(out));
    }
    if (f == "min" || f == "max" || f == "sum") {
      const auto items = iterate(v, line);
      if (f == "sum") {
        Value acc = Value::integer(0);
        for (const auto& x : items) acc = arith("+", acc, x, line);
        return acc;
      }
      if (items.empty()) return Value::undefined("empty sequence");
      Value best = items[0];
      for (const auto& x : items) {
        const int c = compare(x, best, line, "<");
        if ((f == "min" && c < 0) || (f == "max" && c > 0)) best = x;
      }
      return best;
    }
    if (f == "int") {
      if (v.kind == Value::Float) return Value::integer(int64_t(v.f));
      if (v.kind == Value::Int || v.kind == Value::Bool) return Value::integer(v.kind == Value::Bool ? v.b : v.i);
      try {
        return Value::integer(std::stoll(to_str(v)));
      } catch (const std::exception&) {
        return arg(a, kw, 0, "default", Value::integer(0));
      }
    }
    if (f == "float") {
      if (v.is_number()) return Value::number(v.as_double());
      try {
        return Value::number(std::stod(to_str(v)));
      } catch (const std::exception&) {
        return arg(a, kw, 0, "default", Value::number(0));
      }
    }
    if (f == "abs") {
      if (v.kind == Value::Int) return Value::integer(std::llabs(v.i));
      if (v.kind == Value::Float) return Value::number(std::fabs(v.f));
      fail(line, "bad operand type for abs(): '" + type_name(v) + "'");
    }
    if (f == "round") {
      const int64_t prec = arg(a, kw, 0, "precision", Value::integer(0)).i;
      const std::string how = to_str(arg(a, kw, 1, "method", Value::string("common")));
      const double scale = std::pow(10.0, double(prec)), x = v.as_double() * scale;
      const double r = how == "floor" ? std::floor(x) : how == "ceil" ? std::ceil(x) : std::round(x);
      return Value::number(r / scale);
    }
    // String filters.
    const std::string s = to_str(v);
    if (f == "trim") return Value::string(strip(s, true, true, a.empty() ? nullptr : &a[0]));
    if (f == "upper") return Value::string(map_case(s, 1));
    if (f == "lower") return Value::string(map_case(s, 0));
    if (f == "title") return Value::string(map_case(s, 2));
    if (f == "capitalize") return Value::string(map_case(s, 3));
    if (f == "replace") {
      if (a.size() < 2) fail(line, "replace needs (old, new)");
      return Value::string(replace_all(s, to_str(a[0]), to_str(a[1]), a.size() > 2 ? a[2].i : -1));
    }
    if (f == "e" || f == "escape") {
      static constexpr CharEscape kHtml[] = {{'&', "&amp;"}, {'<', "&lt;"}, {'>', "&gt;"}, {'"', "&#34;"}, {'\'', "&#39;"}};
      std::string out;
      for (char c : s) {
        const char* e = escape_of(kHtml, c);
        out += e ? std::string(e) : std::string(1, c);
      }
      return Value::string(out);
    }
    if (f == "indent") {
      const Value w = arg(a, kw, 0, "width", Value::integer(4));
      const std::string pad = w.kind == Value::String ? w.s : std::string(size_t(std::max<int64_t>(0, w.i)), ' ');
      const bool first = arg(a, kw, 1, "first", Value::boolean(false)).truthy();
      const bool blank = arg(a, kw, 2, "blank", Value::boolean(false)).truthy();
      std::string out;
      size_t start = 0;
      bool is_first = true;
      while (start <= s.size()) {
        size_t nl = s.find('\n', start);
        const std::string ln = s.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
        if ((!is_first || first) && (blank || !strip(ln, true, true, nullptr).empty())) out += pad;
        out += ln;
        if (nl == std::string::npos) break;
        out += '\n';
        start = nl + 1;
        is_first = false;
      }
      return Value::string(out);
    }
    fail(line, "unsupported filter '" + f + "'");
  }

  Value arith(const std::string& op, const Value& l, const Value& r, int line) {
    if (!l.defined()) require_defined(l, line);
    if (!r.defined()) require_defined(r, line);
    if (op == "+") {
      if (l.kind == Value::String && r.kind == Value::String) return Value::string(l.s + r.s);
      if (l.kind == Value::ListK && r.kind == Value::ListK) {
        List out = *l.list;
        out.insert(out.end(), r.list->begin(), r.list->end());
        return Value::make_list(std::move(out));
      }
      if (l.kind == Value::String) fail(line, "can only concatenate str (not \"" + type_name(r) + "\") to str");
    }
    if (op == "*" && ((l.kind == Value::String && r.kind == Value::Int) || (l.kind == Value::Int && r.kind == Value::String))) {
      const std::string& s = l.kind == Value::String ? l.s : r.s;
      const int64_t n = l.kind == Value::Int ? l.i : r.i;
      if (n > 0 && int64_t(s.size()) * n > (64 << 20)) fail(line, "string repetition too large");
      std::string out;
      for (int64_t k = 0; k < n; ++k) out += s;
      return Value::string(out);
    }
    if (!l.is_number() || !r.is_number())
      fail(line, "unsupported operand type(s) for " + op + ": '" + type_name(l) + "' and '" + type_name(r) + "'");
    const bool ints = l.kind != Value::Float && r.kind != Value::Float;
    const int64_t li = l.kind == Value::Bool ? l.b : l.i, ri = r.kind == Value::Bool ? r.b : r.i;
    const double lf = l.as_double(), rf = r.as_double();
    if (op == "+") return ints ? Value::integer(li + ri) : Value::number(lf + rf);
    if (op == "-") return ints ? Value::integer(li - ri) : Value::number(lf - rf);
    if (op == "*") return ints ? Value::integer(li * ri) : Value::number(lf * rf);
    if ((op == "/" || op == "//" || op == "%") && rf == 0) fail(line, "division by zero");
    if (op == "/") return Value::number(lf / rf);
    if (op == "//") {
      if (ints) return Value::integer(li / ri - ((li % ri != 0) && ((li < 0) != (ri < 0))));
      return Value::number(std::floor(lf / rf));
    }
    if (op == "%") {
      if (ints) return Value::integer(((li % ri) + ri) % ri);
      return Value::number(lf - rf * std::floor(lf / rf));
    }
    if (op == "**") {
      if (ints && ri >= 0) {
        int64_t p = 1;
        for (int64_t k = 0; k < ri && k < 64; ++k) p *= li;
        return Value::integer(p);
      }
      return Value::number(std::pow(lf, rf));
    }
    fail(line, "unsupported operator '" + op + "'");
  }

  Value eval(const Expr& e) {
    switch (e.kind) {
      case Expr::Literal: return e.value;
      case Expr::Name: return lookup(e.name);
      case Expr::ListLit: {
        List l;
        for (const auto& x : e.args) l.push_back(eval(*x));
        return Value::make_list(std::move(l));
      }
      case Expr::DictLit: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < e.args.size(); k += 2) d.set(to_str(eval(*e.args[k])), eval(*e.args[k + 1]));
        return d;
      }
      case Expr::Attr: return attribute(eval(*e.a), e.name, e.line);
      case Expr::Index: return index(eval(*e.a), eval(*e.args[0]), e.line);
      case Expr::Slice: return slice(eval(*e.a), e);
      case Expr::Call: {
        const Value f = eval(*e.a);
        if (f.kind != Value::FunctionK) {
          require_defined(f, e.line);
          fail(e.line, "'" + type_name(f) + "' object is not callable");
        }
        std::vector<Value> a;
        Kwargs kw;
        for (const auto& x : e.args) a.push_back(eval(*x));
        for (const auto& [k, x] : e.kwargs) kw.emplace_back(k, eval(*x));
        try {
          return (*f.fn)(a, kw);
        } catch (const Error& err) {
          const std::string what = err.what();
          if (what.rfind("chat template", 0) == 0) throw;
          fail(e.line, what);
        }
      }
      case Expr::Filter: return filter(e);
      case Expr::Test: {
        const Value v = eval(*e.a);
        std::vector<Value> a;
        for (const auto& x : e.args) a.push_back(eval(*x));
        return Value::boolean(test(e.name, v, a, e.line) != e.negated);
      }
      case Expr::Unary: {
        const Value v = eval(*e.a);
        if (e.op == "not") return Value::boolean(!v.truthy());
        require_defined(v, e.line);
        if (v.kind == Value::Int) return Value::integer(e.op == "-" ? -v.i : v.i);
        if (v.kind == Value::Float) return Value::number(e.op == "-" ? -v.f : v.f);
        fail(e.line, "bad operand type for unary " + e.op + ": '" + type_name(v) + "'");
      }
      case Expr::Conditional:
        if (eval(*e.a).truthy()) return eval(*e.args[0]);
        return e.args[1] ? eval(*e.args[1]) : Value::undefined("conditional had no else");
      case Expr::Binary: {
        if (e.op == "and") {
          Value l = eval(*e.a);
          return l.truthy() ? eval(*e.b) : l;
        }
        if (e.op == "or") {
          Value l = eval(*e.a);
          return l.truthy() ? l : eval(*e.b);
        }
        const Value l = eval(*e.a), r = eval(*e.b);
        if (e.op == "==") return Value::boolean(equals(l, r));
        if (e.op == "!=") return Value::boolean(!equals(l, r));
        if (e.op == "<") return Value::boolean(compare(l, r, e.line, "<") < 0);
        if (e.op == "<=") return Value::boolean(compare(l, r, e.line, "<=") <= 0);
        if (e.op == ">") return Value::boolean(compare(l, r, e.line, ">") > 0);
        if (e.op == ">=") return Value::boolean(compare(l, r, e.line, ">=") >= 0);
        if (e.op == "in") return Value::boolean(contains(r, l, e.line));
        if (e.op == "notin") return Value::boolean(!contains(r, l, e.line));
        if (e.op == "~") return Value::string(to_str(l) + to_str(r));
        return arith(e.op, l, r, e.line);
      }
    }
    fail(e.line, "bad expression");
  }

  std::string& out_;
  std::vector<Frame> frames_;
  int depth_ = 0;
  // Namespaces are the template's only mutable objects, so the only way to a reference cycle
  // (`{% set ns.me = ns %}`): emptied when the rendering ends, which breaks any cycle (found by fuzz/chat_template).
  std::vector<std::weak_ptr<Dict>> namespaces_;

 public:
  ~Renderer() {
    for (auto& w : namespaces_)
      if (auto d = w.lock()) d->clear();
  }
};

}  // namespace
}  // namespace jinja

ChatTemplate::ChatTemplate(const std::string& source) : program_(std::make_unique<jinja::Program>(jinja::parse(source))) {}
ChatTemplate::~ChatTemplate() = default;

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
  std::string out;
  jinja::Renderer r(context, out);
  r.run(program_->body);
  return out;
}

ChatConfig read_chat_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path);
  ChatConfig c;
  auto token = [&](const char* key) -> std::string {
    if (!j.contains(key) || j[key].is_null()) return "";
    if (j[key].is_string()) return j[key].get<std::string>();
    if (j[key].is_object() && j[key].contains("content") && j[key]["content"].is_string())
      return j[key]["content"].get<std::string>();
    throw Error(path + ": field '" + key + "' must be a string or {\"content\": ...}");
  };
  c.bos_token = token("bos_token");
  c.eos_token = token("eos_token");
  if (j.contains("chat_template")) {
    const auto& t = j["chat_template"];
    if (t.is_string()) {
      c.chat_template = t.get<std::string>();
    } else if (t.is_array()) {
      for (const auto& e : t)
        if (e.is_object() && e.value("name", "") == "default") c.chat_template = e.value("template", "");
      RILL_CHECK(!c.chat_template.empty(), path + ": chat_template list has no entry named 'default'");
    } else if (!t.is_null()) {
      throw Error(path + ": field 'chat_template' must be a string or a list of {name, template}");
    }
  }
  return c;
}

}  // namespace rill
