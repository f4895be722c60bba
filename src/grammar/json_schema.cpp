#include "grammar/json_schema.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <map>
#include <set>

#include "grammar/regex.h"

namespace rill::grammar {

namespace {

using json = nlohmann::ordered_json;
using Item = GrammarBuilder::Item;
using Seq = GrammarBuilder::Seq;

const std::set<std::string> kAnnotations = {"title", "description", "default", "examples", "$schema", "$id",
                                            "$comment", "deprecated", "readOnly", "writeOnly", "discriminator",
                                            "contentEncoding", "contentMediaType", "$defs", "definitions", "strict"};
const std::set<std::string> kKeywords = {
    "type", "properties", "required", "additionalProperties", "enum", "const", "items", "prefixItems", "minItems",
    "maxItems", "uniqueItems", "anyOf", "oneOf", "allOf", "$ref", "minLength", "maxLength", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "nullable", "minProperties",
    "maxProperties", "unevaluatedProperties"};

constexpr int64_t kMaxDigits = 15;  // integers are written with at most this many digits

Seq operator+(Seq a, const Seq& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}
Seq L(const std::string& s) { return GrammarBuilder::literal(s); }
Seq R(int rule) { return Seq{GrammarBuilder::ref(rule)}; }
Item digits(char lo, char hi) {
  Item i;
  i.bytes.set_range(lo, hi);
  return i;
}

class SchemaCompiler {
 public:
  explicit SchemaCompiler(const json& root) : root_(root) {}

  Grammar compile(const JsonFraming& f) {
    const int r = b_.rule("root");
    const Seq one = L(f.before) + R(visit(root_, "#")) + L(f.after);
    if (!f.repeat) {
      b_.define(r, {one});
    } else {
      const int more = def("more", {L(f.separator) + one});
      b_.define(r, {one + Seq{rep(GrammarBuilder::ref(more), 0, -1, "repeat")}});
    }
    return b_.build("root");
  }

  Grammar any_object() {
    const int r = b_.rule("root");
    b_.define(r, {R(object_any())});
    return b_.build("root");
  }

 private:
  [[noreturn]] static void fail(const std::string& keyword, const std::string& path, const std::string& why) {
    throw SchemaError(keyword, path, why);
  }

  int def(const std::string& base, std::vector<Seq> alts) {
    const int r = b_.fresh(base);
    b_.define(r, std::move(alts));
    return r;
  }
  int named(const std::string& name, const std::function<std::vector<Seq>()>& alts) {
    const int r = b_.rule(name);
    if (!b_.defined(r)) b_.define(r, {});  // defined first, so a recursive use finds it
    else return r;
    b_.define(r, alts());
    return r;
  }
  Item rep(const Item& i, int lo, int hi, const std::string& base) { return b_.repeat(i, lo, hi, base); }

  // ---- Shared rules ----
  int ws() {
    return named("ws", [&] {
      Item tabs;
      tabs.bytes.set(' ');
      tabs.bytes.set('\t');
      return std::vector<Seq>{Seq{}, L(" "), L("\n") + Seq{rep(tabs, 0, 20, "indent")}};
    });
  }
  int hex() {
    return named("hex", [&] {
      Item h;
      h.bytes.set_range('0', '9');
      h.bytes.set_range('a', 'f');
      h.bytes.set_range('A', 'F');
      return std::vector<Seq>{Seq{h}};
    });
  }
  int json_char() {
    return named("json-char", [&] {
      const int plain = b_.char_class({{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x10FFFF}}, false);
      Item esc;
      for (char c : std::string("\"\\/bfnrt")) esc.bytes.set(uint8_t(c));
      const Item h = GrammarBuilder::ref(hex());
      return std::vector<Seq>{R(plain), L("\\") + Seq{esc}, L("\\u") + Seq{h, h, h, h}};
    });
  }
  int string_rule(int lo = 0, int hi = -1) {
    const std::string name = "string" + (lo == 0 && hi < 0 ? "" : "-" + std::to_string(lo) + "-" + std::to_string(hi));
    return named(name, [&] {
      return std::vector<Seq>{L("\"") + Seq{rep(GrammarBuilder::ref(json_char()), lo, hi, "chars")} + L("\"")};
    });
  }
  int uint_rule() {  // 0 or a number without a leading zero
    return named("uint", [&] {
      return std::vector<Seq>{L("0"), Seq{digits('1', '9'), rep(digits('0', '9'), 0, kMaxDigits - 1, "digits")}};
    });
  }
  int integer_rule() {
    return named("integer", [&] { return std::vector<Seq>{R(uint_rule()), L("-") + R(uint_rule())}; });
  }
  int fraction() {
    return named("fraction", [&] { return std::vector<Seq>{L(".") + Seq{rep(digits('0', '9'), 1, 15, "frac")}}; });
  }
  int number_rule() {
    return named("number", [&] {
      Item e;
      e.bytes.set('e');
      e.bytes.set('E');
      Item sign;
      sign.bytes.set('+');
      sign.bytes.set('-');
      const int exp = def("exponent", {Seq{e, rep(sign, 0, 1, "sign"), rep(digits('0', '9'), 1, 2, "exp")}});
      const int frac_opt = def("fraction-opt", {Seq{}, R(fraction())});
      const int exp_opt = def("exponent-opt", {Seq{}, R(exp)});
      return std::vector<Seq>{R(integer_rule()) + R(frac_opt) + R(exp_opt)};
    });
  }
  int value_rule() {
    return named("value", [&] {
      return std::vector<Seq>{R(object_any()), R(array_any()), R(string_rule()), R(number_rule()),
                              L("true"),       L("false"),     L("null")};
    });
  }
  int object_any() { return map_rule("object", value_rule()); }
  int array_any() {
    return named("array", [&] {
      const Seq item = R(value_rule());
      const int more = def("array-more", {L(",") + R(ws()) + item});
      return std::vector<Seq>{L("[") + R(ws()) + L("]"),
                              L("[") + R(ws()) + item + Seq{rep(GrammarBuilder::ref(more), 0, -1, "items")} + R(ws()) + L("]")};
    });
  }
  // An object with any keys, each value of rule `value`.
  int map_rule(const std::string& name, int value) {
    return named(name, [&] {
      const Seq member = R(string_rule()) + L(":") + R(ws()) + R(value);
      const int more = def(name + "-more", {L(",") + R(ws()) + member});
      return std::vector<Seq>{L("{") + R(ws()) + L("}"),
                              L("{") + R(ws()) + member + Seq{rep(GrammarBuilder::ref(more), 0, -1, "members")} + R(ws()) + L("}")};
    });
  }

  // ---- Schemas ----

  const json& resolve(const std::string& ref, const std::string& path) {
    if (ref.empty() || ref[0] != '#') fail("$ref", path, "only references inside the schema ('#...') are supported");
    try {
      return root_.at(json::json_pointer(ref.substr(1)));
    } catch (const std::exception&) {
      fail("$ref", path, "'" + ref + "' does not point into the schema");
    }
  }

  int ref_rule(const std::string& ref, const std::string& path) {
    auto it = refs_.find(ref);
    if (it != refs_.end()) return it->second;
    const int r = b_.fresh("ref");
    refs_[ref] = r;
    const json& target = resolve(ref, path);
    b_.define(r, {R(visit(target, ref))});
    return r;
  }

  // allOf: the subschemas (references followed) merged into one object schema.
  json merge(json a, const json& b, const std::string& path) {
    for (auto it = b.begin(); it != b.end(); ++it) {
      const std::string& k = it.key();
      if (kAnnotations.count(k)) continue;
      if (!a.contains(k)) {
        a[k] = it.value();
      } else if (k == "properties") {
        for (auto p = it.value().begin(); p != it.value().end(); ++p)
          a[k][p.key()] = a[k].contains(p.key()) ? merge(flatten(a[k][p.key()], path), flatten(p.value(), path), path)
                                                 : p.value();
      } else if (k == "required") {
        for (const auto& n : it.value())
          if (std::find(a[k].begin(), a[k].end(), n) == a[k].end()) a[k].push_back(n);
      } else if (a[k] != it.value()) {
        fail("allOf", path, "the subschemas give '" + k + "' different values");
      }
    }
    return a;
  }
  json flatten(const json& s, const std::string& path) {
    if (!s.is_object()) return s;
    json out = json::object();
    for (auto it = s.begin(); it != s.end(); ++it)
      if (it.key() != "$ref" && it.key() != "allOf") out[it.key()] = it.value();
    if (s.contains("$ref")) out = merge(out, flatten(resolve(s["$ref"].get<std::string>(), path), path), path);
    if (s.contains("allOf")) {
      if (!s["allOf"].is_array() || s["allOf"].empty()) fail("allOf", path, "must be a non-empty list");
      for (const auto& sub : s["allOf"]) {
        if (!sub.is_object()) fail("allOf", path, "must be a list of object schemas");
        out = merge(out, flatten(sub, path), path);
      }
    }
    return out;
  }

  static json without(json s, const std::string& key) {
    s.erase(key);
    return s;
  }

  int visit(const json& s, const std::string& path) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) fail("false", path, "the schema 'false' matches nothing");
      return value_rule();
    }
    if (!s.is_object()) fail("type", path, "a schema must be an object or a boolean");
    for (auto it = s.begin(); it != s.end(); ++it)
      if (!kKeywords.count(it.key()) && !kAnnotations.count(it.key()))
        fail(it.key(), path, "the keyword '" + it.key() + "' is not supported");

    if (s.contains("$ref") || s.contains("allOf")) {
      bool only_ref = !s.contains("allOf");
      for (auto it = s.begin(); it != s.end(); ++it) only_ref = only_ref && (it.key() == "$ref" || kAnnotations.count(it.key()));
      if (only_ref) {
        if (!s["$ref"].is_string()) fail("$ref", path, "must be a string");
        return ref_rule(s["$ref"].get<std::string>(), path);
      }
      return visit(flatten(s, path), path);
    }
    if (s.contains("nullable") && s["nullable"] == true)
      return def("nullable", {R(visit(without(s, "nullable"), path)), L("null")});
    if (s.contains("const")) return def("const", {L(s["const"].dump())});
    if (s.contains("enum")) {
      if (!s["enum"].is_array() || s["enum"].empty()) fail("enum", path, "must be a non-empty list");
      std::vector<Seq> alts;
      for (const auto& v : s["enum"]) alts.push_back(L(v.dump()));
      return def("enum", std::move(alts));
    }
    for (const char* k : {"anyOf", "oneOf"})
      if (s.contains(k)) {
        if (!s[k].is_array() || s[k].empty()) fail(k, path, "must be a non-empty list");
        const json rest = without(s, k);
        bool siblings = false;
        for (auto it = rest.begin(); it != rest.end(); ++it) siblings = siblings || !kAnnotations.count(it.key());
        std::vector<Seq> alts;
        for (size_t i = 0; i < s[k].size(); ++i) {
          const std::string sub = path + "/" + k + "/" + std::to_string(i);
          alts.push_back(R(siblings ? visit(merge(flatten(rest, sub), flatten(s[k][i], sub), sub), sub) : visit(s[k][i], sub)));
        }
        return def(k, std::move(alts));
      }
    if (s.contains("type") && s["type"].is_array()) {
      if (s["type"].empty()) fail("type", path, "must not be an empty list");
      std::vector<Seq> alts;
      for (const auto& t : s["type"]) {
        json one = s;
        one["type"] = t;
        alts.push_back(R(visit(one, path)));
      }
      return def("types", std::move(alts));
    }
    std::string type;
    if (s.contains("type")) {
      if (!s["type"].is_string()) fail("type", path, "must be a string or a list of strings");
      type = s["type"].get<std::string>();
    } else if (s.contains("properties") || s.contains("required") || s.contains("additionalProperties") ||
               s.contains("minProperties") || s.contains("maxProperties") || s.contains("unevaluatedProperties")) {
      type = "object";  // (a value of this type only: narrower than the schema, never wider)
    } else if (s.contains("items") || s.contains("prefixItems") || s.contains("minItems") || s.contains("maxItems") ||
               s.contains("uniqueItems")) {
      type = "array";
    } else if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern") || s.contains("format")) {
      type = "string";
    } else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") ||
               s.contains("exclusiveMaximum") || s.contains("multipleOf")) {
      type = "number";
    } else {
      return value_rule();
    }
    if (type == "object") return object(s, path);
    if (type == "array") return array(s, path);
    if (type == "string") return string(s, path);
    if (type == "integer" || type == "number") return number(s, path, type == "integer");
    if (type == "boolean") return def("boolean", {L("true"), L("false")});
    if (type == "null") return def("null", {L("null")});
    fail("type", path, "unknown type '" + type + "'");
  }

  static int64_t count(const json& s, const char* k, const std::string& path, int64_t fallback) {
    if (!s.contains(k)) return fallback;
    if (!s[k].is_number_integer() || s[k].get<int64_t>() < 0) fail(k, path, "must be a non-negative integer");
    return s[k].get<int64_t>();
  }

  int object(const json& s, const std::string& path) {
    json props = s.contains("properties") ? s["properties"] : json::object();
    if (!props.is_object()) fail("properties", path, "must be an object");
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) fail("required", path, "must be a list of names");
      for (const auto& n : s["required"]) {
        if (!n.is_string()) fail("required", path, "must be a list of names");
        required.insert(n.get<std::string>());
        if (!props.contains(n.get<std::string>())) props[n.get<std::string>()] = true;
      }
    }
    if (s.contains("unevaluatedProperties") && s["unevaluatedProperties"] != false)
      fail("unevaluatedProperties", path, "only 'false' is supported");
    const json addl = s.contains("additionalProperties") ? s["additionalProperties"] : json(true);
    if (!addl.is_boolean() && !addl.is_object()) fail("additionalProperties", path, "must be a boolean or a schema");
    if (props.empty() && addl != false) {
      if (s.contains("minProperties") && count(s, "minProperties", path, 0) > 0)
        fail("minProperties", path, "is supported only with the properties it counts");
      if (s.contains("maxProperties")) fail("maxProperties", path, "is supported only with 'properties'");
      return addl.is_object() ? map_rule("map-" + std::to_string(map_count_++), visit(addl, path + "/additionalProperties"))
                              : object_any();
    }
    const int64_t n = int64_t(props.size());
    if (count(s, "minProperties", path, 0) > int64_t(required.size()))
      fail("minProperties", path, "is supported only up to the number of required properties");
    if (count(s, "maxProperties", path, n) < n) fail("maxProperties", path, "is supported only above the number of properties");

    std::vector<Seq> kv;
    std::vector<bool> req;
    for (auto it = props.begin(); it != props.end(); ++it) {
      const int value = visit(it.value(), path + "/properties/" + it.key());
      kv.push_back(L(json(it.key()).dump()) + L(":") + R(ws()) + R(value));
      req.push_back(required.count(it.key()) > 0);
    }
    // rest[i][e]: the properties from i on, after e (0 or 1) properties were written (so a comma comes first).
    std::vector<std::array<int, 2>> rest(size_t(n) + 1);
    rest[size_t(n)] = {def("props-end", {Seq{}}), def("props-end", {Seq{}})};
    for (int64_t i = n - 1; i >= 0; --i)
      for (int e = 0; e < 2; ++e) {
        const Seq take = (e ? L(",") + R(ws()) : Seq{}) + kv[size_t(i)] + R(rest[size_t(i) + 1][1]);
        std::vector<Seq> alts{take};
        if (!req[size_t(i)]) alts.push_back(R(rest[size_t(i) + 1][e]));
        rest[size_t(i)][size_t(e)] = def("props", std::move(alts));
      }
    return def("object", {L("{") + R(ws()) + R(rest[0][0]) + R(ws()) + L("}")});
  }

  int array(const json& s, const std::string& path) {
    for (const char* k : {"contains", "minContains", "maxContains", "unevaluatedItems"})
      if (s.contains(k)) fail(k, path, "is not supported");
    const json prefix = s.contains("prefixItems") ? s["prefixItems"] : json::array();
    if (!prefix.is_array()) fail("prefixItems", path, "must be a list of schemas");
    const json items = s.contains("items") ? s["items"] : json(true);
    const int64_t k = int64_t(prefix.size());
    const int64_t lo = count(s, "minItems", path, 0), hi = count(s, "maxItems", path, -1);
    if (hi >= 0 && lo > hi) fail("minItems", path, "is above maxItems");
    if (s.contains("uniqueItems") && s["uniqueItems"] == true && (hi < 0 || hi > 1))
      fail("uniqueItems", path, "is not supported (except with maxItems <= 1)");
    if (lo > 10000 || hi > 10000) fail(lo > 10000 ? "minItems" : "maxItems", path, "counts above 10000 are not supported");
    if (items == false && lo > k) fail("minItems", path, "asks for more items than prefixItems allows");

    // P(j): the items from j on (a comma before each, since j > 0), as allowed by minItems and maxItems.
    int tail;
    if (items == false || (hi >= 0 && hi <= k)) {
      tail = def("items-end", {Seq{}});
    } else {
      const int item = visit(items, path + "/items");
      const int more = def("item-more", {L(",") + R(ws()) + R(item)});
      tail = def("items", {Seq{rep(GrammarBuilder::ref(more), int(std::max<int64_t>(0, lo - std::max<int64_t>(k, 1))),
                                   hi < 0 ? -1 : int(hi - std::max<int64_t>(k, 1)), "item-rep")}});
      if (k == 0) {
        // No prefix: the first item has no comma.
        const Seq first = R(item) + R(tail);
        std::vector<Seq> alts{first};
        if (lo == 0) alts.emplace_back(Seq{});
        if (hi == 0) alts = {Seq{}};
        return def("array", {L("[") + R(ws()) + R(def("array-items", std::move(alts))) + R(ws()) + L("]")});
      }
    }
    const int64_t last = hi >= 0 ? std::min(hi, k) : k;
    int next = tail;
    for (int64_t j = last - 1; j >= 0; --j) {
      const int item = visit(prefix[size_t(j)], path + "/prefixItems/" + std::to_string(j));
      std::vector<Seq> alts{(j ? L(",") + R(ws()) : Seq{}) + R(item) + R(next)};
      if (j >= lo) alts.emplace_back(Seq{});
      next = def("prefix", std::move(alts));
    }
    return def("array", {L("[") + R(ws()) + R(next) + R(ws()) + L("]")});
  }

  int string(const json& s, const std::string& path) {
    const int64_t lo = count(s, "minLength", path, 0), hi = count(s, "maxLength", path, -1);
    if (hi >= 0 && lo > hi) fail("minLength", path, "is above maxLength");
    if (lo > 10000 || hi > 10000) fail(lo > 10000 ? "minLength" : "maxLength", path, "lengths above 10000 are not supported");
    const bool lengths = s.contains("minLength") || s.contains("maxLength");
    if (s.contains("pattern")) {
      if (!s["pattern"].is_string()) fail("pattern", path, "must be a string");
      if (lengths || s.contains("format")) fail("pattern", path, "is not supported together with minLength, maxLength or format");
      try {
        const int re = regex_rule(b_, s["pattern"].get<std::string>(), RegexOptions{true, true});
        return def("pattern", {L("\"") + R(re) + L("\"")});
      } catch (const SchemaError&) {
        throw;
      } catch (const GrammarError& e) {
        fail("pattern", path, e.what());
      }
    }
    if (s.contains("format")) {
      if (!s["format"].is_string()) fail("format", path, "must be a string");
      if (lengths) fail("format", path, "is not supported together with minLength or maxLength");
      return def("formatted", {L("\"") + R(format(s["format"].get<std::string>(), path)) + L("\"")});
    }
    return string_rule(int(lo), int(hi));
  }

  int format(const std::string& f, const std::string& path) {
    auto d = [](char lo, char hi) { return Seq{digits(lo, hi)}; };
    const Seq d09 = d('0', '9');
    auto two_digit = [&](const std::string& name, int max_tens_digit) {  // 00..(max)9
      return named(name, [&] { return std::vector<Seq>{d('0', char('0' + max_tens_digit)) + d09}; });
    };
    auto date = [&] {
      return named("date", [&] {
        const int day28 = def("day", {d('0', '0') + d('1', '9'), d('1', '1') + d09, d('2', '2') + d('0', '8')});
        const int month = def("month", {L("0") + d('1', '9'), L("1") + d('0', '2')});
        const int month_not_feb = def("month", {L("01"), L("0") + d('3', '9'), L("1") + d('0', '2')});
        const int month31 = def("month", {L("01"), L("03"), L("05"), L("07"), L("08"), L("10"), L("12")});
        const int md = def("month-day", {R(month) + L("-") + R(day28), R(month_not_feb) + L("-") + L("29"),
                                         R(month_not_feb) + L("-") + L("30"), R(month31) + L("-") + L("31")});
        return std::vector<Seq>{d09 + d09 + d09 + d09 + L("-") + R(md)};
      });
    };
    auto time = [&] {
      return named("time", [&] {
        const int hour = def("hour", {d('0', '1') + d09, L("2") + d('0', '3')});
        const int minute = two_digit("minute", 5);
        const int frac = def("second-frac", {Seq{}, L(".") + Seq{rep(digits('0', '9'), 1, 6, "frac")}});
        Item pm;
        pm.bytes.set('+');
        pm.bytes.set('-');
        const int zone = def("zone", {L("Z"), Seq{pm} + R(hour) + L(":") + R(minute)});
        return std::vector<Seq>{R(hour) + L(":") + R(minute) + L(":") + R(minute) + R(frac) + R(zone)};
      });
    };
    if (f == "date") return date();
    if (f == "time") return time();
    if (f == "date-time") return def("date-time", {R(date()) + L("T") + R(time())});
    if (f == "uuid") {
      const Item h = GrammarBuilder::ref(hex());
      auto hexes = [&](int n) { return Seq(size_t(n), h); };
      return def("uuid", {hexes(8) + L("-") + hexes(4) + L("-") + hexes(4) + L("-") + hexes(4) + L("-") + hexes(12)});
    }
    if (f == "email") {
      Item alnum;
      alnum.bytes.set_range('a', 'z');
      alnum.bytes.set_range('0', '9');
      const Item word = rep(alnum, 1, 30, "word");
      const int label = def("label", {Seq{word, rep(GrammarBuilder::ref(def("label-part", {L("-") + Seq{word}})), 0, 3, "parts")}});
      const int local = def("local", {Seq{word, rep(GrammarBuilder::ref(def("local-part", {L(".") + Seq{word}})), 0, 3, "parts")}});
      const int more = def("domain-part", {L(".") + R(label)});
      return def("email", {R(local) + L("@") + R(label) + Seq{rep(GrammarBuilder::ref(more), 1, 3, "domain")}});
    }
    if (f == "ipv4") {
      const int octet = def("octet", {L("25") + d('0', '5'), L("2") + d('0', '4') + d09, L("1") + d09 + d09,
                                      d('1', '9') + d09, d09});
      return def("ipv4", {R(octet) + L(".") + R(octet) + L(".") + R(octet) + L(".") + R(octet)});
    }
    fail("format", path, "the format '" + f + "' is not supported (date, time, date-time, uuid, email, ipv4 are)");
  }

  // ---- Numbers ----

  static int64_t pow10(int64_t n) {
    int64_t p = 1;
    while (n-- > 0) p *= 10;
    return p;
  }

  // Digit strings a <= b of one length: the numbers between them, as alternatives.
  std::vector<Seq> same_length(const std::string& a, const std::string& b) {
    if (a.size() == 1) return {Seq{digits(a[0], b[0])}};
    const std::string ra = a.substr(1), rb = b.substr(1);
    if (a[0] == b[0]) return {L(a.substr(0, 1)) + R(def("digits", same_length(ra, rb)))};
    const std::string zeros(ra.size(), '0'), nines(ra.size(), '9');
    if (ra == zeros && rb == nines)
      return {Seq{digits(a[0], b[0]), rep(digits('0', '9'), int(ra.size()), int(ra.size()), "digits")}};
    std::vector<Seq> alts{L(a.substr(0, 1)) + R(def("digits", same_length(ra, nines)))};
    if (a[0] + 1 <= b[0] - 1)
      alts.push_back(Seq{digits(char(a[0] + 1), char(b[0] - 1)), rep(digits('0', '9'), int(ra.size()), int(ra.size()), "digits")});
    alts.push_back(L(b.substr(0, 1)) + R(def("digits", same_length(zeros, rb))));
    return alts;
  }

  // The integers in [lo, hi] (0 <= lo; hi < 0: no upper bound), in at most kMaxDigits digits.
  std::vector<Seq> nonneg_range(int64_t lo, int64_t hi) {
    const int64_t top = pow10(kMaxDigits) - 1;
    if (hi < 0 || hi > top) hi = top;
    std::vector<Seq> alts;
    const int64_t la = int64_t(std::to_string(lo).size()), lb = int64_t(std::to_string(hi).size());
    for (int64_t len = la; len <= lb; ++len) {
      const int64_t from = len == la ? lo : pow10(len - 1);
      const int64_t to = len == lb ? hi : pow10(len) - 1;
      for (Seq& s : same_length(std::to_string(from), std::to_string(to))) alts.push_back(std::move(s));
    }
    return alts;
  }

  // The integers in [lo, hi]; absent bounds are open.
  std::vector<Seq> int_range(std::optional<int64_t> lo, std::optional<int64_t> hi) {
    std::vector<Seq> alts;
    if (!lo || *lo < 0) {  // the negative part: "-" and the magnitudes
      const int64_t mag_lo = hi && *hi < 0 ? -*hi : 1;
      const int64_t mag_hi = lo ? -*lo : -1;
      alts.push_back(L("-") + R(def("magnitude", nonneg_range(mag_lo, mag_hi))));
    }
    if (!hi || *hi >= 0)
      for (Seq& s : nonneg_range(lo && *lo > 0 ? *lo : 0, hi ? *hi : -1)) alts.push_back(std::move(s));
    return alts;
  }

  int number(const json& s, const std::string& path, bool integer) {
    if (s.contains("multipleOf") && !(integer && s["multipleOf"] == 1)) fail("multipleOf", path, "is not supported");
    struct Bound {
      double v = 0;
      bool set = false, exclusive = false;
      const char* key = "";
    };
    Bound lo, hi;
    auto read = [&](const char* key, Bound* b, bool exclusive) {
      if (!s.contains(key)) return;
      const json& v = s[key];
      if (v.is_boolean()) {  // draft 4: exclusiveMinimum: true makes minimum exclusive
        if (v.get<bool>()) b->exclusive = true;
        return;
      }
      if (!v.is_number()) fail(key, path, "must be a number");
      const double x = v.get<double>();
      const bool tighter = b == &lo ? x > b->v : x < b->v;
      if (!b->set || tighter || (x == b->v && exclusive)) *b = Bound{x, true, exclusive, key};
    };
    read("minimum", &lo, false);
    read("exclusiveMinimum", &lo, true);
    read("maximum", &hi, false);
    read("exclusiveMaximum", &hi, true);
    if (!lo.set && !hi.set) return integer ? integer_rule() : number_rule();
    if (integer) {
      std::optional<int64_t> a, z;
      if (lo.set) a = int64_t(lo.exclusive ? std::floor(lo.v) + 1 : std::ceil(lo.v));
      if (hi.set) z = int64_t(hi.exclusive ? std::ceil(hi.v) - 1 : std::floor(hi.v));
      if (a && z && *a > *z) fail(lo.key, path, "no integer lies between the bounds");
      return def("int-range", int_range(a, z));
    }
    // Numbers: integer bounds of either sign. x >= 0 and x < 0 (written "-" y, y > 0) each take a range of
    // non-negative numbers. Exponents are not written.
    for (const Bound* b : {&lo, &hi})
      if (b->set && (b->v != std::floor(b->v) || std::fabs(b->v) > 1e15))
        fail(b->key, path, "number bounds are supported when they are integers");
    std::vector<Seq> alts;
    const bool nonneg = !hi.set || hi.v > 0 || (hi.v == 0 && !hi.exclusive);
    if (nonneg) {
      const bool from_lo = lo.set && lo.v >= 0;
      nonneg_number(from_lo ? int64_t(lo.v) : 0, from_lo && lo.exclusive, hi.set ? std::optional<int64_t>(int64_t(hi.v)) : std::nullopt,
                    hi.exclusive, &alts, "");
    }
    if (!lo.set || lo.v < 0) {
      const bool to_hi = hi.set && hi.v < 0;  // else y > 0
      nonneg_number(to_hi ? int64_t(-hi.v) : 0, to_hi ? hi.exclusive : true,
                    lo.set ? std::optional<int64_t>(int64_t(-lo.v)) : std::nullopt, lo.exclusive, &alts, "-");
    }
    if (alts.empty()) fail(lo.set ? lo.key : hi.key, path, "no number lies between the bounds");
    return def("number-range", std::move(alts));
  }

  // The alternatives for a number y >= 0 with lo <= y (lo < y when lo_ex) and y <= hi (y < hi), each after `sign`.
  void nonneg_number(int64_t lo, bool lo_ex, std::optional<int64_t> hi, bool hi_ex, std::vector<Seq>* alts,
                     const std::string& sign) {
    const int64_t first = lo_ex ? lo + 1 : lo;  // integer parts that may take any fraction: [first, hi - 1]
    if (!hi || *hi - 1 >= first) {
      const int frac_opt = def("fraction-opt", {Seq{}, R(fraction())});
      alts->push_back(L(sign) + R(def("int-range", nonneg_range(first, hi ? *hi - 1 : -1))) + R(frac_opt));
    }
    if (lo_ex && (!hi || *hi > lo))  // lo itself only with a non-zero fraction
      alts->push_back(L(sign + std::to_string(lo) + ".") + Seq{rep(digits('0', '9'), 0, 14, "frac"), digits('1', '9')});
    if (hi && !hi_ex && *hi >= first) alts->push_back(L(sign + std::to_string(*hi)));
  }

  const json& root_;
  GrammarBuilder b_;
  std::map<std::string, int> refs_;
  int map_count_ = 0;
};

}  // namespace

Grammar json_schema_grammar(const nlohmann::ordered_json& schema, const JsonFraming& framing) {
  return SchemaCompiler(schema).compile(framing);
}

Grammar json_object_grammar() {
  const json empty = json::object();
  return SchemaCompiler(empty).any_object();
}

}  // namespace rill::grammar
