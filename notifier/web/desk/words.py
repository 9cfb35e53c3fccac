"""The desk's words in Chinese and English: one template per page reads its labels from here, so the two
languages cannot drift apart page by page."""

from __future__ import annotations

LANGUAGES = ("zh-CN", "en")

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "desk": "Service desk", "sign_in": "Sign in", "sign_out": "Sign out", "name": "Name",
        "password": "Password", "wrong": "Wrong name or password.",
        "locked": "Too many failed sign-ins: this agent is locked for a while. Ask a supervisor, or try later.",
        "find": "Find a customer", "find_hint": "Booking reference, phone (any format), email or name",
        "search": "Search", "results": "Customers found", "none_found": "Nobody matches.",
        "inbox": "Inbox", "worklist": "Follow-ups", "broadcasts": "Broadcasts", "stats": "Statistics",
        "customer": "Customer", "bookings": "Bookings", "timeline": "Timeline", "phone": "Phone",
        "email": "Email", "language": "Language", "key_account": "Key account",
        "reveal": "Show full contact details", "revealed": "Contact details shown (this is recorded).",
        "record_choice": "Record the customer's decision (by phone)", "option": "Option (its key, or keep)",
        "record": "Record", "disruption": "Disruption", "sailing": "Sailing", "status": "Status",
        "log_call": "Log a call", "outcome": "Outcome", "note": "Notes", "save": "Save",
        "booking": "Booking", "any_booking": "(no particular booking)", "tickets": "Tickets",
        "ticket": "Ticket", "category": "Category", "received": "Received", "due": "Answer due",
        "assigned": "Assigned to", "take": "Take", "answer": "Answer", "send_answer": "Send the answer",
        "resolve": "Resolve", "resolution": "How it was resolved", "change": "Change",
        "message": "Message", "from": "From", "unknown_sender": "unknown sender", "reason": "Reason",
        "next_step": "Next step", "close": "Close", "nothing": "Nothing here.", "approve": "Approve",
        "send": "Send", "created_by": "Created by", "messages": "Messages", "done": "Done.",
        "overdue": "overdue", "other_language": "中文", "skip": "Skip to the content",
        "by_category": "Tickets by category", "by_week": "Tickets by week", "by_route": "Tickets by route",
        "response_times": "Answer times against the SLA", "disruption_figures": "Disruptions",
        "download_csv": "Download CSV", "count": "Count", "week": "Week", "route": "Route",
        "within_sla": "Answered within the SLA", "median_first": "Median first answer (hours)",
        "median_resolution": "Median resolution (hours)", "told_within": "Told within",
        "minutes": "minutes", "choices": "Choices", "reach": "Disruptions: bookings",
        "affected": "affected", "reachable": "reachable", "unreachable": "Unreachable", "satisfaction": "Satisfaction",
        "refused": "Refused", "agent_channel": "by our agent",
    },
    "zh-CN": {
        "desk": "客服台", "sign_in": "登录", "sign_out": "退出", "name": "姓名", "password": "密码",
        "wrong": "姓名或密码错误。", "locked": "登录失败次数过多，该账号已暂时锁定。请联系主管或稍后再试。",
        "find": "查找客户", "find_hint": "订单号、电话（任意格式）、邮箱或姓名", "search": "搜索",
        "results": "找到的客户", "none_found": "没有匹配的客户。", "inbox": "工单", "worklist": "回访",
        "broadcasts": "群发", "stats": "统计", "customer": "客户", "bookings": "订单", "timeline": "记录",
        "phone": "电话", "email": "邮箱", "language": "语言", "key_account": "重要客户",
        "reveal": "显示完整联系方式", "revealed": "已显示联系方式（已记录）。",
        "record_choice": "记录客户的决定（电话）", "option": "选项（选项号，或 keep 保留原票）", "record": "记录", "disruption": "停航",
        "sailing": "航班", "status": "状态", "log_call": "记录通话", "outcome": "结果", "note": "备注",
        "save": "保存", "booking": "订单", "any_booking": "（不指定订单）", "tickets": "工单", "ticket": "工单",
        "category": "类别", "received": "收到时间", "due": "应答期限", "assigned": "负责人", "take": "认领",
        "answer": "回复", "send_answer": "发送回复", "resolve": "结案", "resolution": "处理结果",
        "change": "修改", "message": "留言", "from": "来自", "unknown_sender": "未知发件人", "reason": "原因",
        "next_step": "下一步", "close": "完成", "nothing": "暂无。", "approve": "批准", "send": "发送",
        "created_by": "创建人", "messages": "消息数", "done": "已完成。", "overdue": "已超时",
        "other_language": "English", "skip": "跳到正文", "by_category": "按类别统计工单",
        "by_week": "按周统计工单", "by_route": "按航线统计工单", "response_times": "应答时间与服务时限",
        "disruption_figures": "停航通知", "download_csv": "下载 CSV", "count": "数量", "week": "周",
        "route": "航线", "within_sla": "时限内应答", "median_first": "首次应答中位数（小时）",
        "median_resolution": "结案中位数（小时）", "told_within": "通知送达于", "minutes": "分钟内",
        "choices": "客户选择", "reach": "停航：受影响订单",
        "affected": "受影响", "reachable": "可联系", "unreachable": "无法联系", "satisfaction": "满意度", "refused": "未能完成",
        "agent_channel": "由客服记录",
    },
}

CATEGORY_WORDS = {
    "en": {"inquiry": "Inquiry", "complaint": "Complaint", "refund": "Refund request", "other": "Other"},
    "zh-CN": {"inquiry": "咨询", "complaint": "投诉", "refund": "退款申请", "other": "其他"},
}
TICKET_STATUS_WORDS = {
    "en": {"open": "open", "answered": "answered", "resolved": "resolved"},
    "zh-CN": {"open": "待处理", "answered": "已回复", "resolved": "已结案"},
}
CALL_OUTCOMES = ("reached", "no-answer", "voicemail", "other")
CALL_WORDS = {
    "en": {"reached": "Reached", "no-answer": "No answer", "voicemail": "Voicemail", "other": "Other"},
    "zh-CN": {"reached": "已接通", "no-answer": "无人接听", "voicemail": "语音留言", "other": "其他"},
}
FOLLOWUP_OUTCOME_WORDS = {
    "en": {"rebooked": "Rebooked", "refunded": "Refunded", "no-answer": "No answer", "other": "Other"},
    "zh-CN": {"rebooked": "已改签", "refunded": "已退款", "no-answer": "无人接听", "other": "其他"},
}
# What the agent should do next, per follow-up reason (notifier.aftercare.followups.REASONS).
NEXT_STEPS = {
    "en": {"unreachable": "Call the customer: no notice reached them.",
           "free-text": "Read their message and answer it.",
           "help": "They asked for help: call them.",
           "not-carried-out": "Their choice cannot stand: offer another sailing or a refund.",
           "key-account": "Key account: call them personally."},
    "zh-CN": {"unreachable": "致电客户：通知均未送达。", "free-text": "阅读留言并回复。",
              "help": "客户请求帮助：请致电。", "not-carried-out": "客户的选择无法执行：请另行改签或退款。",
              "key-account": "重要客户：请亲自致电。"},
}
REASON_WORDS = {
    "en": {"unreachable": "Unreachable", "free-text": "Message", "help": "Asked for help",
           "not-carried-out": "Choice not carried out", "key-account": "Key account"},
    "zh-CN": {"unreachable": "无法联系", "free-text": "留言", "help": "请求帮助", "not-carried-out": "选择无法执行",
              "key-account": "重要客户"},
}


def words(lang: str) -> dict[str, dict[str, str] | str]:
    """Every label of one language, for a template."""
    return {**WORDS[lang], "categories": CATEGORY_WORDS[lang], "ticket_statuses": TICKET_STATUS_WORDS[lang],
            "call_outcomes": CALL_WORDS[lang], "followup_outcomes": FOLLOWUP_OUTCOME_WORDS[lang],
            "next_steps": NEXT_STEPS[lang], "reasons": REASON_WORDS[lang]}
