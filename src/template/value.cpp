#include "template/value.h"

#include <charconv>
#include <cmath>
#include <cstdio>

#include "core/error.h"

namespace rill::jinja {

Value Value::from_json(const nlohmann::ordered_json& j) {
  switch (j.type()) {
    case nlohmann::ordered_json::value_t::null: return none();
    case nlohmann::ordered_json::value_t::boolean: return boolean(j.get<bool>());
    case nlohmann::ordered_json::value_t::number_integer: return integer(j.get<int64_t>());
    case nlohmann::ordered_json::value_t::number_unsigned: return integer(int64_t(j.get<uint64_t>()));
    case nlohmann::ordered_json::value_t::number_float: return number(j.get<double>());
    case nlohmann::ordered_json::value_t::string: return string(j.get<std::string>());
    case nlohmann::ordered_json::value_t::array: {
      List l;
      for (const auto& e : j) l.push_back(from_json(e));
      return make_list(std::move(l));
    }
    case nlohmann::ordered_json::value_t::object: {
      Dict d;
      for (const auto& [k, e] : j.items()) d.emplace_back(k, from_json(e));
      return make_dict(std::move(d));
    }
    default: return undefined();
  }
}

bool Value::truthy() const {
  switch (kind) {
    case Undefined:
    case None: return false;
    case Bool: return b;
    case Int: return i != 0;
    case Float: return f != 0;
    case String: return !s.empty();
    case ListK: return !list->empty();
    case DictK: return !dict->empty();
    case FunctionK: return true;
  }
  return false;
}

const Value* Value::find(const std::string& key) const {
  if (kind != DictK) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

Value* Value::find(const std::string& key) {
  if (kind != DictK) return nullptr;
  for (auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value v) {
  if (Value* e = find(key)) *e = std::move(v);
  else dict->emplace_back(key, std::move(v));
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Undefined: return "Undefined";
    case Value::None: return "NoneType";
    case Value::Bool: return "bool";
    case Value::Int: return "int";
    case Value::Float: return "float";
    case Value::String: return "str";
    case Value::ListK: return "list";
    case Value::DictK: return v.is_namespace ? "Namespace" : "dict";
    case Value::FunctionK: return "function";
  }
  return "?";
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d > 0 ? "inf" : "-inf";
  if (d == 0) return std::signbit(d) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then Python's layout: fixed for 1e-4 <= |d| < 1e16, else exponent.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  std::string mant = sci.substr(0, e);
  const int exp = std::stoi(sci.substr(e + 1));
  const bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant)
    if (c != '.') digits += c;
  std::string out;
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp + 1) >= digits.size()) {
      out = digits + std::string(size_t(exp + 1) - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exp + 1)) + "." + digits.substr(size_t(exp + 1));
    }
  } else {
    out = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out += eb;
  }
  return neg ? "-" + out : out;
}

std::string to_repr(const Value& v) {
  if (v.kind != Value::String) return to_str(v);
  // Python repr: single quotes unless the string contains one and no double quote.
  const bool dq = v.s.find('\'') != std::string::npos && v.s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (char c : v.s) {
    if (c == q || c == '\\') out += '\\';
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else out += c;
  }
  return out + q;
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Undefined: return "";
    case Value::None: return "None";
    case Value::Bool: return v.b ? "True" : "False";
    case Value::Int: return std::to_string(v.i);
    case Value::Float: return float_repr(v.f);
    case Value::String: return v.s;
    case Value::ListK: {
      std::string out = "[";
      for (size_t k = 0; k < v.list->size(); ++k) out += (k ? ", " : "") + to_repr((*v.list)[k]);
      return out + "]";
    }
    case Value::DictK: {
      std::string out = "{";
      for (size_t k = 0; k < v.dict->size(); ++k)
        out += (k ? ", " : "") + to_repr(Value::string((*v.dict)[k].first)) + ": " + to_repr((*v.dict)[k].second);
      return out + "}";
    }
    case Value::FunctionK: return "<function>";
  }
  return "";
}

namespace {

void json_string(const std::string& s, std::string& out) {
  static constexpr CharEscape kJson[] = {{'"', "\\\""}, {'\\', "\\\\"}, {'\n', "\\n"}, {'\r', "\\r"},
                                         {'\t', "\\t"}, {'\b', "\\b"},  {'\f', "\\f"}};
  out += '"';
  for (char c : s) {
    if (const char* e = escape_of(kJson, c)) {
      out += e;
    } else if ((unsigned char)c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", (unsigned char)c);
      out += b;
    } else {
      out += c;
    }
  }
  out += '"';
}

void json_value(const Value& v, int indent, int depth, std::string& out) {
  const std::string nl = indent >= 0 ? "\n" + std::string(size_t(indent * (depth + 1)), ' ') : "";
  const std::string close = indent >= 0 ? "\n" + std::string(size_t(indent * depth), ' ') : "";
  const char* sep = indent >= 0 ? "," : ", ";
  switch (v.kind) {
    case Value::None: out += "null"; break;
    case Value::Bool: out += v.b ? "true" : "false"; break;
    case Value::Int: out += std::to_string(v.i); break;
    case Value::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f > 0 ? "Infinity" : "-Infinity") : float_repr(v.f);
      break;
    case Value::String: json_string(v.s, out); break;
    case Value::ListK:
    case Value::DictK: {
      // [a, b] or {"k": a, ...}, one item a line when indented.
      const bool list = v.kind == Value::ListK;
      const size_t n = list ? v.list->size() : v.dict->size();
      out += list ? "[" : "{";
      for (size_t k = 0; k < n; ++k) {
        out += (k ? sep : "") + nl;
        if (!list) {
          json_string((*v.dict)[k].first, out);
          out += ": ";
        }
        json_value(list ? (*v.list)[k] : (*v.dict)[k].second, indent, depth + 1, out);
      }
      out += (n ? close : "") + (list ? "]" : "}");
      break;
    }
    default:
      throw Error("tojson: Object of type " + type_name(v) + " is not JSON serializable");
  }
}

}  // namespace

std::string to_json(const Value& v, int indent) {
  std::string out;
  json_value(v, indent, 0, out);
  return out;
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind != Value::Float && b.kind != Value::Float)
      return (a.kind == Value::Bool ? int64_t(a.b) : a.i) == (b.kind == Value::Bool ? int64_t(b.b) : b.i);
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Value::Undefined:
    case Value::None: return true;
    case Value::String: return a.s == b.s;
    case Value::ListK:
      if (a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    case Value::DictK:
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, v] : *a.dict) {
        const Value* o = b.find(k);
        if (!o || !equals(v, *o)) return false;
      }
      return true;
    case Value::FunctionK: return a.fn == b.fn;
    default: return false;
  }
}

}  // namespace rill::jinja
