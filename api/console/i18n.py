"""The console's words in zh-CN (first) and English: one message catalog, chosen per request.

Owns the catalog and the choice of language: the `hv_lang` cookie when set, else the first of zh/en in
Accept-Language, else zh-CN. A missing key renders as the key itself (visible in review, never a crash).
Never holds PHI.
"""

from __future__ import annotations

from starlette.requests import Request

LANGS = ("zh-CN", "en")
COOKIE = "hv_lang"

# key: (zh-CN, en)
CATALOG: dict[str, tuple[str, str]] = {
    "app.name": ("健康档案保险箱", "Health Vault"),
    "nav.records": ("我的报告", "My records"),
    "nav.sharing": ("共享与授权", "Sharing"),
    "nav.access": ("谁看过我的档案", "Who read my records"),
    "nav.consents": ("同意管理", "Consents"),
    "nav.shared": ("共享给我的", "Shared with me"),
    "nav.breakglass": ("紧急访问", "Break-glass"),
    "nav.audit": ("审计检索", "Audit search"),
    "nav.exports": ("审计导出", "Audit export"),
    "nav.keys": ("密钥状态", "Key status"),
    "nav.signout": ("退出登录", "Sign out"),
    "nav.skip": ("跳到正文", "Skip to content"),
    "nav.menu": ("主菜单", "Main menu"),
    "lang.switch": ("English", "中文"),
    "lang.label": ("语言", "Language"),
    "login.title": ("登录", "Sign in"),
    "login.username": ("用户名", "Username"),
    "login.password": ("密码", "Password"),
    "login.otp": ("动态验证码（已开启两步验证时填写）", "One-time code (if two-step sign-in is on)"),
    "login.submit": ("登录", "Sign in"),
    "login.register": ("还没有账号？注册", "No account yet? Register"),
    "login.first": ("工作人员首次登录", "Staff first sign-in"),
    "register.title": ("注册", "Register"),
    "register.real_name": ("真实姓名", "Full name"),
    "register.id_number": ("身份证号", "Resident ID number"),
    "register.phone": ("手机号", "Mobile phone"),
    "register.password_hint": ("至少 12 位，包含字母和数字", "At least 12 characters with letters and digits"),
    "register.notice": ("隐私政策", "Privacy notice"),
    "register.notice_full": ("阅读完整隐私政策", "Read the full privacy notice"),
    "register.consents": ("请分别选择您的同意", "Your separate consents"),
    "consent.health_data": ("同意处理我的健康资料（必需）", "I consent to processing my health data (required)"),
    "consent.id_number": ("同意处理我的身份证号（必需）", "I consent to processing my ID number (required)"),
    "consent.ocr": ("同意自动识别化验单上的数值（可选）", "I consent to automatic reading of lab sheets (optional)"),
    "register.submit": ("同意并注册", "Agree and register"),
    "register.done": ("注册成功，请登录。", "Registered. Please sign in."),
    "records.title": ("我的报告", "My records"),
    "records.empty": ("还没有上传报告。", "No records yet."),
    "upload.title": ("上传报告", "Upload a record"),
    "upload.file": ("拍照或选择文件（图片或 PDF）", "Take a photo or choose a file (image or PDF)"),
    "upload.category": ("类别", "Category"),
    "upload.title_field": ("标题（可选）", "Title (optional)"),
    "upload.submit": ("上传", "Upload"),
    "upload.progress": ("上传进度", "Upload progress"),
    "cat.lab_report": ("化验单", "Lab report"),
    "cat.exam_report": ("检查报告", "Exam report"),
    "cat.medical_record": ("病历", "Medical record"),
    "cat.id_document": ("证件", "ID document"),
    "cat.other": ("其他", "Other"),
    "record.title": ("报告详情", "Record"),
    "record.uploaded": ("上传时间", "Uploaded"),
    "record.file": ("文件名", "File name"),
    "record.status": ("识别状态", "Reading status"),
    "record.original": ("原件", "Original"),
    "record.values": ("化验结果", "Lab values"),
    "record.extract": ("识别这张化验单", "Read this lab sheet"),
    "record.declined_hint": ("需要先在“同意管理”中同意自动识别。",
                             "Give the automatic-reading consent (Consents) first."),
    "record.no_values": ("没有识别出的数值。", "No extracted values."),
    "status.pending": ("正在识别，请稍候…", "Being read, please wait…"),
    "status.done": ("已识别", "Read"),
    "status.needs_review": ("已识别，部分需要核对", "Read; some values need review"),
    "status.failed": ("识别失败", "Could not be read"),
    "status.declined": ("未同意自动识别", "Automatic reading declined"),
    "lab.name": ("项目", "Test"),
    "lab.value": ("结果", "Result"),
    "lab.flag": ("提示", "Flag"),
    "lab.unit": ("单位", "Unit"),
    "lab.ref": ("参考范围", "Reference"),
    "lab.high": ("偏高", "high"),
    "lab.low": ("偏低", "low"),
    "lab.review": ("需核对", "Check"),
    "lab.trend": ("趋势", "Trend"),
    "lab.correct": ("更正", "Correct"),
    "lab.new_value": ("新的结果", "New value"),
    "lab.save": ("保存更正", "Save correction"),
    "lab.history": ("更正记录", "Correction history"),
    "trend.title": ("趋势图", "Trend"),
    "trend.band": ("参考范围", "reference range"),
    "trend.none": ("只有一次结果，暂无趋势。", "Only one result so far: no trend yet."),
    "share.title": ("共享给医生或陪诊员", "Share with a doctor or escort"),
    "share.grantee": ("对方用户名", "Their username"),
    "share.records": ("要共享的报告", "Records to share"),
    "share.actions": ("允许", "Allow"),
    "share.view": ("查看", "View"),
    "share.download": ("查看原件/下载", "See the original / download"),
    "share.purpose": ("用途", "Purpose"),
    "share.days": ("有效天数", "Valid for (days)"),
    "share.submit": ("确认共享", "Share"),
    "share.list": ("我的授权", "My grants"),
    "share.received": ("我收到的授权", "Grants I received"),
    "share.none": ("没有授权。", "No grants."),
    "share.revoke": ("撤回", "Revoke"),
    "share.revoked": ("已撤回", "Revoked"),
    "share.active": ("有效", "Active"),
    "share.expired": ("已过期", "Expired"),
    "share.until": ("截止", "Until"),
    "share.receipt": ("授权回执", "Receipt"),
    "share.to": ("授权给", "To"),
    "access.title": ("谁看过我的档案", "Who read my records"),
    "access.when": ("时间", "When"),
    "access.who": ("访问者", "Who"),
    "access.what": ("操作", "What"),
    "access.outcome": ("结果", "Outcome"),
    "access.grant": ("依据授权", "Under grant"),
    "access.none": ("暂无记录。", "Nothing yet."),
    "consents.title": ("同意管理", "Consents"),
    "consents.given": ("已同意", "Given"),
    "consents.withdrawn": ("未同意", "Not given"),
    "consents.give": ("同意", "Give"),
    "consents.withdraw": ("撤回同意", "Withdraw"),
    "consents.notice": ("隐私政策版本", "Privacy notice version"),
    "consents.outdated": ("隐私政策已更新，请重新确认。", "The privacy notice changed: please confirm again."),
    "shared.title": ("共享给我的报告", "Records shared with me"),
    "shared.none": ("目前没有共享给您的报告。", "Nothing is shared with you right now."),
    "shared.open": ("查看", "Open"),
    "first.title": ("首次登录设置", "First sign-in"),
    "first.step1": ("第一步：修改初始密码", "Step 1: change the initial password"),
    "first.old": ("初始密码", "Initial password"),
    "first.new": ("新密码", "New password"),
    "first.change": ("修改密码", "Change password"),
    "first.step2": ("第二步：设置两步验证", "Step 2: set up two-step sign-in"),
    "first.enroll": ("生成二维码", "Show the QR code"),
    "first.scan": ("用验证器 App 扫描二维码，或手动输入密钥：", "Scan with your authenticator app, or type the key:"),
    "first.activate": ("启用两步验证", "Turn on two-step sign-in"),
    "first.code": ("验证器显示的 6 位数字", "The 6-digit code your app shows"),
    "first.done": ("设置完成，请登录。", "All set. Please sign in."),
    "first.changed": ("密码已修改。", "Password changed."),
    "bg.title": ("紧急访问（破窗）", "Break-glass access"),
    "bg.warning": ("警告：紧急访问会立即通知患者和审计人员，并被完整记录。仅限危及生命的紧急情况。",
                   "Warning: break-glass access is recorded in full and shown to the patient and the auditors at "
                   "once. Life-threatening emergencies only."),
    "bg.patient": ("患者编号", "Patient id"),
    "bg.reason": ("紧急原因（至少 10 个字）", "Emergency reason (at least 10 characters)"),
    "bg.otp": ("身份验证器上的动态码（再次确认身份）", "A fresh code from your authenticator (to confirm it is you)"),
    "bg.submit": ("我确认，开始紧急访问", "I confirm: start break-glass access"),
    "bg.active": ("紧急访问已开启，剩余时间：", "Break-glass access is open. Time left:"),
    "bg.ends": ("结束时间", "Ends at"),
    "audit.title": ("审计检索", "Audit search"),
    "audit.actor": ("操作者（账号编号）", "Actor (account id)"),
    "audit.patient": ("患者假名", "Patient pseudonym"),
    "audit.action": ("操作", "Action"),
    "audit.outcome": ("结果", "Outcome"),
    "audit.since": ("起始时间", "From"),
    "audit.until": ("结束时间", "Until"),
    "audit.search": ("检索", "Search"),
    "audit.next": ("下一页", "Next page"),
    "audit.none": ("没有匹配的事件。", "No matching events."),
    "audit.any": ("全部", "Any"),
    "audit.alerts": ("告警（拒绝激增、紧急访问）", "Alerts (denial bursts, break-glass)"),
    "audit.time": ("时间", "Time"),
    "audit.role": ("角色", "Role"),
    "audit.resource": ("对象", "Resource"),
    "audit.reason": ("说明", "Reason"),
    "export.title": ("审计导出", "Audit export"),
    "export.start": ("开始导出", "Start an export"),
    "export.progress": ("导出进度", "Export progress"),
    "export.download": ("下载导出包", "Download the bundle"),
    "export.failed": ("导出失败", "The export failed"),
    "export.verify": ("离线验证", "Verify offline"),
    "export.verify_how": ("解压后在任何一台装有 healthvault 的电脑上运行（无需数据库和密钥）：",
                          "Unpack it and run, on any machine with healthvault (no database, no secret):"),
    "export.vkey": ("验证公钥", "Verifier key"),
    "keys.title": ("密钥状态", "Key status"),
    "keys.root": ("根密钥版本", "Root key versions"),
    "keys.pending": ("待重新封装", "Awaiting rewrap"),
    "nav.accounts": ("账号管理", "Accounts"),
    "nav.security": ("角色与密钥轮换", "Roles and rotations"),
    "admin.accounts": ("账号管理", "Accounts"),
    "admin.create": ("新建工作人员账号", "Create a staff account"),
    "admin.initial_password": ("初始密码（首次登录时必须修改）", "Initial password (changed at first sign-in)"),
    "admin.state": ("状态", "State"),
    "admin.actions": ("操作", "Actions"),
    "admin.active": ("启用", "active"),
    "admin.disabled": ("已停用", "disabled"),
    "admin.locked": ("已锁定", "locked"),
    "admin.disable": ("停用", "Disable"),
    "admin.enable": ("启用", "Enable"),
    "admin.unlock": ("解锁", "Unlock"),
    "admin.security": ("角色与密钥轮换", "Roles and key rotations"),
    "admin.role_change": ("调整角色", "Change the role"),
    "admin.account_id": ("账号编号", "Account id"),
    "admin.rotations": ("根密钥轮换（双人审批）", "Root key rotations (two-person rule)"),
    "admin.rotation_request": ("申请轮换根密钥", "Request a root key rotation"),
    "admin.approve": ("批准", "Approve"),
    "error.title": ("出错了", "Something went wrong"),
    "error.signin": ("请先登录。", "Please sign in."),
    "error.csrf": ("请求已过期或来源不明，请刷新页面后重试。",
                   "This request expired or did not come from this site. Reload the page and try again."),
    "error.back": ("返回首页", "Back to the start"),
    "common.yes": ("是", "yes"),
    "common.no": ("否", "no"),
    "common.allow": ("允许", "allowed"),
    "common.deny": ("拒绝", "denied"),
}

# Errors the console words itself; any other vault error shows its own (PHI-free) English detail.
ERRORS: dict[str, tuple[str, str]] = {
    "invalid-credentials": ("用户名或密码不正确。", "Wrong username or password."),
    "otp-required": ("请输入验证器上的动态验证码。", "Enter the code from your authenticator app."),
    "otp-enrollment-required": ("请先完成首次登录设置（两步验证）。",
                                "Finish the first sign-in (two-step set-up) first."),
    "password-change-required": ("请先修改初始密码。", "Change the initial password first."),
    "not-found": ("没有找到，或您无权查看。", "Not found, or not yours to see."),
    "forbidden": ("您无权进行此操作。", "You may not do this."),
    "consent-required": ("请先在“同意管理”中确认必需的同意。", "Give the required consents first (Consents)."),
    "weak-password": ("密码不符合要求。", "The password does not meet the policy."),
    "account-locked": ("账号已暂时锁定，请稍后再试。", "The account is locked for a while. Try again later."),
}


def text(lang: str, key: str) -> str:
    entry = CATALOG.get(key)
    if entry is None:
        return key
    return entry[1] if lang == "en" else entry[0]


def error_text(lang: str, exc: Exception) -> str:
    slug = getattr(exc, "slug", "")
    entry = ERRORS.get(slug)
    if entry is not None:
        return entry[1] if lang == "en" else entry[0]
    return str(getattr(exc, "detail", "")) or text(lang, "error.title")


def choose(request: Request) -> str:
    chosen = request.cookies.get(COOKIE)
    if chosen in LANGS:
        return chosen
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower()
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    return "zh-CN"
