// Value: the dynamic values of the chat-template interpreter, with Python/Jinja2 semantics (truthiness,
// equality, str(), json.dumps) so renderings are byte-identical to transformers' apply_chat_template.
// Lists and dicts are shared (reference semantics, as in Python), dicts keep insertion order.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace rill::jinja {

struct Value;
using List = std::vector<Value>;
using Dict = std::vector<std::pair<std::string, Value>>;
// A callable: positional args, keyword args.
using Function = std::function<Value(std::vector<Value>&, std::vector<std::pair<std::string, Value>>&)>;

struct Value {
  enum Kind { Undefined, None, Bool, Int, Float, String, ListK, DictK, FunctionK };
  Kind kind = Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // String; for Undefined: why it is undefined (used in error messages)
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Function> fn;
  bool is_namespace = false;  // a namespace() object: attributes may be assigned

  static Value undefined(std::string why = "") { Value v; v.s = std::move(why); return v; }
  static Value none() { Value v; v.kind = None; return v; }
  static Value boolean(bool x) { Value v; v.kind = Bool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.kind = Int; v.i = x; return v; }
  static Value number(double x) { Value v; v.kind = Float; v.f = x; return v; }
  static Value string(std::string x) { Value v; v.kind = String; v.s = std::move(x); return v; }
  static Value make_list(List l = {}) { Value v; v.kind = ListK; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value make_dict(Dict d = {}) { Value v; v.kind = DictK; v.dict = std::make_shared<Dict>(std::move(d)); return v; }
  static Value function(Function f) { Value v; v.kind = FunctionK; v.fn = std::make_shared<Function>(std::move(f)); return v; }
  static Value from_json(const nlohmann::ordered_json& j);

  bool defined() const { return kind != Undefined; }
  bool is_number() const { return kind == Int || kind == Float || kind == Bool; }
  double as_double() const { return kind == Float ? f : double(kind == Bool ? int64_t(b) : i); }
  bool truthy() const;
  // The dict entry for key, or nullptr.
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);
  void set(const std::string& key, Value v);  // dicts only
};

// Python-style type names for messages: "str", "int", "dict", "NoneType", ...
std::string type_name(const Value& v);
// str(v) as Jinja prints it ({{ v }}): None -> "None", True -> "True", undefined -> "".
std::string to_str(const Value& v);
// repr-like rendering of strings inside containers: 'a'.
std::string to_repr(const Value& v);
// json.dumps(v, ensure_ascii=False, indent=indent) with Python's separators; indent < 0: one line.
std::string to_json(const Value& v, int indent = -1);
// Python float repr: 1.0, 0.1, 1e-05, 1e+16.
std::string float_repr(double d);
// Python ==.
bool equals(const Value& a, const Value& b);

// A character and what it becomes (an escape table: JSON's, HTML's, a string literal's).
struct CharEscape {
  char c;
  const char* text;
};
// The text `table` gives c, or null when it has none.
template <size_t N>
const char* escape_of(const CharEscape (&table)[N], char c) {
  for (const CharEscape& e : table)
    if (e.c == c) return e.text;
  return nullptr;
}

}  // namespace rill::jinja
