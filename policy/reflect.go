package policy

import "reflect"

// reflectValue returns the addressable value behind a pointer.
func reflectValue(ptr any) reflect.Value { return reflect.ValueOf(ptr).Elem() }
