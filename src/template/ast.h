// The parsed form of a template: expressions and statements, each with the source line it came from
// (for error messages).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "template/value.h"

namespace rill::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum Kind {
    Literal,      // value
    Name,         // name
    ListLit,      // args
    DictLit,      // keys (args at even positions), values (odd)
    Attr,         // a.name
    Index,        // a[args[0]]
    Slice,        // a[args[0]:args[1]:args[2]] (absent parts are null)
    Call,         // a(args, kwargs)
    Filter,       // a | name(args, kwargs)
    Test,         // a is [not] name(args)
    Unary,        // op a      (op: "not", "-", "+")
    Binary,       // a op b    (op: or and == != < <= > >= in notin + - * / // % ** ~)
    Conditional,  // args[0] if a else args[1] (args[1] may be null)
  } kind;
  int line = 0;
  Value value;
  std::string name, op;
  bool negated = false;  // Test: "is not"
  ExprPtr a, b;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum Kind { Text, Output, If, For, Set, SetBlock, Macro, Break, Continue } kind;
  int line = 0;
  std::string text;                                       // Text
  ExprPtr expr;                                           // Output, Set value, For iterable
  std::vector<std::pair<ExprPtr, Body>> branches;         // If: (condition, body); else has null condition
  std::vector<std::string> targets;                       // For loop variables; Set: name (+ attribute)
  std::string attr;                                       // Set ns.attr
  ExprPtr filter;                                         // For ... if filter
  Body body, else_body;                                   // For, Macro, SetBlock
  std::vector<std::pair<std::string, ExprPtr>> params;    // Macro parameters and defaults
};

struct Program {
  Body body;
};

// Parses template source; throws rill::Error "chat template line N: ..." on anything unsupported.
Program parse(const std::string& source);

}  // namespace rill::jinja
